"""What :class:`tether.sdk.AgentClient` puts on the wire and reads back: client
authentication (RFC 6749 §2.3.1 Basic, RFC 7523 assertions), RFC 9449 DPoP proofs, the
RFC 6749 §5 responses and errors, and the errors of Tether's own API.

Private to the SDK, and like the rest of it independent of the server: the server's checks
in :mod:`tether.credentials` are the other side of these functions, and the tests hold the
two against each other.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit, urlunsplit

import httpx2 as httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwa, jws, jwt
from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwk import ECKey, OKPKey, RSAKey

SigningKey = ECKey | OKPKey | RSAKey
#: A private key as :class:`AgentClient` takes it: PEM (PKCS#8 or traditional, unencrypted)
#: as bytes or str, or a joserfc key.
KeyInput = SigningKey | bytes | str

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; RFC 7523 §3 asks for a short one
_MIN_RSA_BITS = 2048  # what Tether (and RFC 7518 §3.3) requires of RSA keys
# The algorithm a key signs with unless its JWK names another one it can use.
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# RFC 9864 replaces the polymorphic "EdDSA" (RFC 8037) with the fully specified "Ed25519",
# and joserfc-based verifiers (Tether's own token endpoint among them) warn on "EdDSA". Both
# are accepted by Tether; a key whose JWK says "alg": "EdDSA" signs with the old name for
# servers that know only that one.
_OKP_ALGS = frozenset({"Ed25519", "EdDSA"})


class TokenError(Exception):
    """Getting a token failed. ``error`` is the OAuth error code and ``description`` its
    ``error_description`` (RFC 6749 §5.2; ``invalid_dpop_proof`` and ``use_dpop_nonce`` from
    RFC 9449 §5 and §8, ``invalid_target`` from RFC 8707 §2). Two codes are the SDK's own:
    ``temporarily_unavailable`` when the server cannot be reached or fails (5xx), and
    ``invalid_response`` when its answer breaks the protocol. ``status`` is the HTTP status,
    or None when no response came.
    """

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class ApiError(Exception):
    """A call to Tether's API (not the token endpoint) failed. ``code`` and ``message`` come
    from Tether's error body (``forbidden``, ``validation_error``, ``approval_not_found``…);
    two codes are the SDK's own: ``unavailable`` when the server cannot be reached and
    ``invalid_response`` when its answer is not what the API promises. ``status`` is the HTTP
    status, or None when no response came; ``details`` the body's ``details`` object (empty
    when there is none); ``retry_after`` the seconds a 429 or 503 asked the caller to wait
    (RFC 9110 §10.2.3), or None. Never an authorization decision: a deny is a
    :class:`~tether.sdk.Decision`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details: Mapping[str, Any] = dict(details or {})
        self.retry_after = retry_after


class _Registry(jws.JWSRegistry):
    """joserfc's registry for the one algorithm of a key, without the deprecation warning
    for "EdDSA": that warning is for verifiers choosing what to accept, and a signer uses the
    name only when its key asks for it (see ``_OKP_ALGS``)."""

    def get_alg(self, name: str) -> jwa.JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm '{name}' is not allowed")
        return self.algorithms[name]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """The DPoP ``ath`` claim (RFC 9449 §4.2): base64url(SHA-256(ASCII(token)))."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def htu(url: str) -> str:
    """The DPoP ``htu`` of a request URL: the target URI without query and fragment
    (RFC 9449 §4.2). Raises ValueError for anything but an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key and the JWS algorithm it signs with."""

    key: SigningKey
    alg: str

    @classmethod
    def load(cls, value: KeyInput, *, what: str) -> Signer:
        """A signer for a PEM private key or a joserfc key; ``what`` names the argument in
        errors. Raises ValueError for a public, symmetric, too small or unreadable key and
        TypeError for anything that is not a key."""
        if isinstance(value, str | bytes):
            key = _from_pem(value.encode() if isinstance(value, str) else value, what)
        elif isinstance(value, ECKey | OKPKey | RSAKey):
            key = value
        else:
            raise TypeError(f"{what} must be PEM (bytes or str) or a joserfc EC/OKP/RSA key")
        if not key.is_private:
            raise ValueError(f"{what} must be a private key")
        return cls(key, _alg_for(key, what))

    @classmethod
    def generate(cls) -> Signer:
        """An ephemeral P-256 key signing with ES256 (RFC 9449 §4: any asymmetric key)."""
        return cls(ECKey.generate_key("P-256", private=True), "ES256")

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK, without private members (RFC 9449 §4.2 ``jwk``)."""
        return dict(self.key.as_dict(private=False))

    def thumbprint(self) -> str:
        """The RFC 7638 SHA-256 thumbprint: the ``cnf.jkt`` a bound token carries."""
        return self.key.thumbprint()

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        header = {**header, "alg": self.alg}
        return jwt.encode(header, claims, self.key, registry=_Registry(algorithms=[self.alg]))


def client_assertion(signer: Signer, client_id: str, audience: str, now: float) -> str:
    """An RFC 7523 §2.2 client assertion: ``iss`` = ``sub`` = the client, ``aud`` = the
    authorization server's issuer (RFC 7523 §3; its rfc7523bis revision makes the issuer the
    sole value), a short ``exp`` and a random single-use ``jti``."""
    iat = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(24),
    }
    return signer.sign({"typ": "JWT"}, claims)


def dpop_proof(
    signer: Signer,
    method: str,
    url: str,
    now: float,
    *,
    access_token: str | None = None,
    nonce: str | None = None,
) -> str:
    """A DPoP proof JWT (RFC 9449 §4.2) for one request: header ``typ: dpop+jwt`` with the
    public ``jwk``; claims ``jti``, ``htm``, ``htu``, ``iat``, plus ``ath`` when presenting
    an access token (§7.1) and ``nonce`` when the server supplied one (§8, §9)."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(24),
        "htm": method.upper(),
        "htu": htu(url),
        "iat": int(now),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return signer.sign({"typ": "dpop+jwt", "jwk": signer.public_jwk()}, claims)


def _from_pem(data: bytes, what: str) -> SigningKey:
    try:
        native = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{what} is not an unencrypted PEM private key: {exc}") from exc
    if isinstance(native, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(native)
    if isinstance(native, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(native)
    if isinstance(native, rsa.RSAPrivateKey):
        if native.key_size < _MIN_RSA_BITS:  # checked first: joserfc warns on import
            raise ValueError(f"{what}: RSA keys must have at least {_MIN_RSA_BITS} bits")
        return RSAKey.import_key(native)
    raise ValueError(f"{what} must be an EC (P-256/384/521), Ed25519 or RSA key")


def _alg_for(key: SigningKey, what: str) -> str:
    named = key.alg
    if isinstance(key, ECKey):
        alg = _EC_ALGS.get(key.curve_name)
        if alg is None:
            raise ValueError(f"{what}: curve {key.curve_name} is not supported")
        allowed: frozenset[str] = frozenset({alg})
    elif isinstance(key, OKPKey):
        if key.curve_name != "Ed25519":
            raise ValueError(f"{what}: only Ed25519 OKP keys sign")
        alg, allowed = "Ed25519", _OKP_ALGS
    else:
        if key.raw_value.key_size < _MIN_RSA_BITS:
            raise ValueError(f"{what}: RSA keys must have at least {_MIN_RSA_BITS} bits")
        alg, allowed = "RS256", _RSA_ALGS
    if named is None:
        return alg
    if named not in allowed:
        raise ValueError(f"{what}: its JWK names alg {named}, which this key cannot sign with")
    return named


def scope_param(scope: str | Sequence[str] | None) -> str | None:
    """RFC 6749 §3.3: scopes travel as one space-separated string."""
    if scope is None or isinstance(scope, str):
        return scope or None
    return " ".join(scope) or None


def basic_auth(client_id: str, secret: str) -> str:
    """``client_secret_basic``: both parts form-urlencoded before base64 (RFC 6749 §2.3.1)."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TokenError(
            "invalid_response", f"the {what} is not a JSON object", status=response.status_code
        )
    return body


def oauth_error(response: httpx.Response) -> TokenError:
    """The RFC 6749 §5.2 error in a response, or one that describes the HTTP failure."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return TokenError(
            body["error"], description if isinstance(description, str) else "", status=status
        )
    error = "temporarily_unavailable" if status >= 500 else "invalid_response"
    return TokenError(
        error,
        f"{response.request.method} {response.request.url} answered "
        f"HTTP {status} without an OAuth error",
        status=status,
    )


def api_error(response: httpx.Response, kind: type[ApiError] = ApiError) -> ApiError:
    """The error of Tether's API in a failed response (``{"error": {"code", "message",
    "details"}}``, API.md), or one that describes the HTTP failure, as a ``kind``."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        message, details = error.get("message"), error.get("details")
        return kind(error["code"], message if isinstance(message, str) else "", status=status,
                    details=details if isinstance(details, dict) else None,
                    retry_after=retry_after)  # fmt: skip
    code = "unavailable" if status >= 500 else "invalid_response"
    request = response.request
    return kind(code, f"{request.method} {request.url.copy_with(query=None)} answered HTTP "
                f"{status}", status=status, retry_after=retry_after)  # fmt: skip


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as delay-seconds (RFC 9110 §10.2.3); an HTTP-date is not used by
    Tether and counts as absent."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def parse_metadata(response: httpx.Response, issuer: str) -> tuple[dict[str, Any], str]:
    """The RFC 8414 metadata document and its token endpoint. Raises :class:`TokenError`
    for an error response, a document without ``token_endpoint``, or one whose ``issuer`` is
    not the one it was fetched for (§3.3: that is how a client notices a mix-up)."""
    if not response.is_success:
        raise oauth_error(response)
    doc = json_object(response, "metadata")
    if doc.get("issuer") != issuer:
        raise TokenError(
            "invalid_response", f"metadata issuer {doc.get('issuer')!r} is not {issuer!r}"
        )
    endpoint = doc.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https:", "http:")):
        raise TokenError("invalid_response", "metadata has no token_endpoint")
    return doc, endpoint
