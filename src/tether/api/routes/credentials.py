"""/v1/agents/{id}/credentials and /v1/keys (API.md "Agent credentials")."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from fastapi import APIRouter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    with_config,
)
from typing_extensions import TypedDict

from tether.api.deps import Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import AgentId, CredentialId
from tether.fields import NO_NUL, ScopeToken, StrictModel, integral

router = APIRouter(tags=["credentials"])
ExpiresIn = Annotated[int, Field(ge=60, le=366 * 86_400), BeforeValidator(integral)]
Scopes = Annotated[list[ScopeToken], Field(max_length=100)]

# -- the public JWK of a public_key credential (RFC 7517, RFC 7518 §6, RFC 8037) -------------
#
# Stated as exactly as JSON Schema can: the members each key type needs, unpadded base64url of
# the right length (RFC 7515 §2; the last character carries no stray bits, which the key
# import refuses), RSA numbers as RFC 7518 §2 Base64urlUInt (no leading zero byte) with a
# modulus of 2048 to 16384 bits and an odd exponent of at least 3, the optional public members
# a signing key may carry, and nothing else (so no private member: a private key sent to a
# server is a leaked key). The one thing no schema can state, that an EC point lies on its
# curve, is checked when the key is imported: 422 on field ``jwk``.
_B64 = "[A-Za-z0-9_-]"
_TAIL_1 = f"{_B64}[AQgw]"  # 1 byte: 2 characters, the last with 4 zero bits
_TAIL_2 = f"{_B64}{{2}}[AEIMQUYcgkosw048]"  # 2 bytes: 3 characters, the last with 2 zero bits
_OCTETS_32 = f"^(?:{_B64}{{4}}){{10}}{_TAIL_2}$"
_OCTETS_48 = f"^(?:{_B64}{{4}}){{16}}$"
_OCTETS_66 = f"^(?:{_B64}{{4}}){{22}}$"
# Base64urlUInt: the first byte is not zero (first character not "A", or the second not A-P).
_FIRST_BYTE = "(?:[B-Za-z0-9_-][A-Za-z0-9_-]|A[Q-Za-z0-9_-])"
# The modulus: 256 bytes with the top bit set (first character g-z, 0-9, - or _), or 257 to
# 2048 bytes.
_MODULUS = (
    f"^(?:[g-z0-9_-]{_B64}{{3}}(?:{_B64}{{4}}){{84}}{_TAIL_1}"
    f"|{_FIRST_BYTE}{_B64}{{2}}(?:{_B64}{{4}}){{84}}{_TAIL_2}"
    f"|{_FIRST_BYTE}{_B64}{{2}}(?:{_B64}{{4}}){{85,681}}(?:{_TAIL_1}|{_TAIL_2})?)$"
)
# The exponent: odd (the last character's bit that is the last byte's lowest), at least 3,
# at most 6 bytes.
_ODD_1 = "[Qw]"  # the last of a 1-byte tail
_ODD_2 = "[EMUcks08]"  # the last of a 2-byte tail
_ODD_3 = "[BDFHJLNPRTVXZbdfhjlnprtvxz13579_]"  # the last of a 3-byte group
_EXPONENT = (
    f"^(?:[B-Za-z0-9_-]{_ODD_1}|Aw|{_FIRST_BYTE}{_ODD_2}|{_FIRST_BYTE}{_B64}{_ODD_3}"
    f"|{_FIRST_BYTE}{_B64}{{2}}(?:{_B64}{_ODD_1}|{_B64}{{2}}{_ODD_2}|{_B64}{{3}}{_ODD_3}))$"
)

Octets32 = Annotated[str, StringConstraints(pattern=_OCTETS_32), Field(description="32 bytes")]
Octets48 = Annotated[str, StringConstraints(pattern=_OCTETS_48), Field(description="48 bytes")]
Octets66 = Annotated[str, StringConstraints(pattern=_OCTETS_66), Field(description="66 bytes")]


@with_config(ConfigDict(extra="forbid", strict=True))
class _PublicJwkMembers(TypedDict):
    """Optional public members; ``use``/``key_ops`` can only say "signature verification"."""

    kid: NotRequired[Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]]
    alg: NotRequired[Annotated[str, StringConstraints(max_length=20, pattern=NO_NUL)]]
    use: NotRequired[Literal["sig"]]
    key_ops: NotRequired[Annotated[list[Literal["verify"]], Field(max_length=1)]]
    ext: NotRequired[bool]  # WebCrypto's exportKey("jwk") adds it


@with_config(ConfigDict(extra="forbid", strict=True))
class EcP256Jwk(_PublicJwkMembers):
    kty: Literal["EC"]
    crv: Literal["P-256"]
    x: Octets32
    y: Octets32


@with_config(ConfigDict(extra="forbid", strict=True))
class EcP384Jwk(_PublicJwkMembers):
    kty: Literal["EC"]
    crv: Literal["P-384"]
    x: Octets48
    y: Octets48


@with_config(ConfigDict(extra="forbid", strict=True))
class EcP521Jwk(_PublicJwkMembers):
    kty: Literal["EC"]
    crv: Literal["P-521"]
    x: Octets66
    y: Octets66


@with_config(ConfigDict(extra="forbid", strict=True))
class Ed25519Jwk(_PublicJwkMembers):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: Octets32


@with_config(ConfigDict(extra="forbid", strict=True))
class RsaJwk(_PublicJwkMembers):
    kty: Literal["RSA"]
    n: Annotated[str, StringConstraints(pattern=_MODULUS), Field(description="the modulus")]
    e: Annotated[
        str,
        StringConstraints(pattern=_EXPONENT),
        Field(description="the public exponent (usually AQAB)"),
    ]


# Tags name the member tried; like pydantic's own union labels they contain a "-", so the API's
# error field path (``tether.api.errors``) leaves them out: an error names ``jwk.x``, not
# ``jwk.ec-p256.x``.
_JWK_TAGS: dict[tuple[str, str], str] = {
    ("EC", "P-256"): "ec-p256",
    ("EC", "P-384"): "ec-p384",
    ("EC", "P-521"): "ec-p521",
    ("OKP", "Ed25519"): "okp-ed25519",
}


def _jwk_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kty, crv = value.get("kty"), value.get("crv")
    if kty == "RSA":
        return "rsa"
    return _JWK_TAGS.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None


PublicJwk = Annotated[
    Annotated[EcP256Jwk, Tag("ec-p256")]
    | Annotated[EcP384Jwk, Tag("ec-p384")]
    | Annotated[EcP521Jwk, Tag("ec-p521")]
    | Annotated[Ed25519Jwk, Tag("okp-ed25519")]
    | Annotated[RsaJwk, Tag("rsa")],
    Discriminator(
        _jwk_tag,
        custom_error_type="jwk_kty",
        custom_error_message="a public JWK: kty EC (crv P-256, P-384 or P-521), "
        "OKP (crv Ed25519) or RSA",
    ),
    Field(description="the agent's public key (RFC 7517); never private members"),
]


# -- requests ---------------------------------------------------------------------------------
def _known_type(value: Any) -> Any:
    if value not in ("api_key", "public_key"):
        raise ValueError("type must be api_key or public_key")
    return value


class ApiKeyCreate(StrictModel):
    """An API key: the agent authenticates with ``client_secret_basic`` or ``_post``."""

    type: Annotated[Literal["api_key"], BeforeValidator(_known_type)]
    expires_in: ExpiresIn | None = None
    scopes: Scopes | None = None


class PublicKeyCreate(StrictModel):
    """A public key: the agent authenticates with ``private_key_jwt`` (RFC 7523)."""

    type: Literal["public_key"]
    jwk: PublicJwk
    expires_in: ExpiresIn | None = None
    scopes: Scopes | None = None


def _credential_tag(value: Any) -> str:
    # Anything but a public_key request is validated as an api_key one, so an unknown type is
    # an error on field "type".
    is_public = isinstance(value, dict) and value.get("type") == "public_key"
    return "public-key" if is_public else "api-key"


CredentialCreate = Annotated[
    Annotated[ApiKeyCreate, Tag("api-key")] | Annotated[PublicKeyCreate, Tag("public-key")],
    Discriminator(_credential_tag),
]


# -- responses --------------------------------------------------------------------------------
class _CredentialFields(BaseModel):
    id: str
    client_id: str = Field(description="the agent id")
    agent_id: str
    scopes: list[str] | None = Field(description="the credential's scope ceiling, if any")
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class ApiKeyOut(_CredentialFields):
    type: Literal["api_key"]
    jwk: None
    jkt: None


class ApiKeyCreated(ApiKeyOut):
    client_secret: str = Field(description="shown only in this response")


class PublicKeyOut(_CredentialFields):
    type: Literal["public_key"]
    jwk: dict[str, Any]
    jkt: str = Field(description="RFC 7638 thumbprint of the jwk")


CredentialOut = Annotated[ApiKeyOut | PublicKeyOut, Field(discriminator="type")]
CreatedCredential = Annotated[ApiKeyCreated | PublicKeyOut, Field(discriminator="type")]


class CredentialPage(BaseModel):
    items: list[CredentialOut]
    next_cursor: str | None


class KeyOut(BaseModel):
    kid: str
    alg: str
    status: Literal["next", "active", "retired"]
    created_at: str
    activated_at: str | None
    retired_at: str | None
    unpublish_at: str | None


class KeyPage(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None


class RotationOut(BaseModel):
    active: str = Field(description="the kid now signing")
    retired: list[str] = Field(description="kids retired, still published until the time below")
    next: str = Field(description="the kid published for the next rotation")
    retired_published_until: str


# -- routes -----------------------------------------------------------------------------------
@router.post("/v1/agents/{agent_id}/credentials", status_code=201,
             response_model=CreatedCredential,
             responses=responses(400, 401, 403, 404, 409, 413, 422))  # fmt: skip
def create_credential(
    agent_id: AgentId, body: CredentialCreate, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """An API key (its ``client_secret`` is shown only here) or a public key for
    ``private_key_jwt``. The ``client_id`` is the agent id."""
    if isinstance(body, ApiKeyCreate):
        cred, secret = svc.credentials.create_api_key(
            who, agent_id, expires_in=body.expires_in, scopes=body.scopes
        )
        return {**cred.to_json(), "client_secret": secret}
    cred = svc.credentials.create_public_key(
        who, agent_id, jwk=dict(body.jwk), expires_in=body.expires_in, scopes=body.scopes
    )
    return cred.to_json()


@router.get("/v1/agents/{agent_id}/credentials", response_model=CredentialPage,
            responses=responses(400, 401, 403, 404, 422))  # fmt: skip
def list_credentials(
    agent_id: AgentId, svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    page = svc.credentials.list(who, agent_id, cursor=cursor, limit=limit)
    return {"items": [c.to_json() for c in page.items], "next_cursor": page.next_cursor}


@router.delete("/v1/agents/{agent_id}/credentials/{credential_id}", response_model=CredentialOut,
               responses=responses(401, 403, 404, 422))  # fmt: skip
def delete_credential(
    agent_id: AgentId,
    credential_id: CredentialId,
    svc: ServicesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    return svc.credentials.delete(who, agent_id, credential_id).to_json()


@router.get("/v1/keys", response_model=KeyPage, responses=responses(400, 401, 403, 422))
def list_keys(
    svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    page = svc.signing_keys.list(who, cursor=cursor, limit=limit)
    return {"items": [k.to_json() for k in page.items], "next_cursor": page.next_cursor}


@router.post("/v1/keys/rotate", response_model=RotationOut, responses=responses(401, 403))
def rotate_keys(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Promote the published next key, retire the active one (kept in the JWKS until its
    last token expires), publish a new next key."""
    return svc.signing_keys.rotate(who)
