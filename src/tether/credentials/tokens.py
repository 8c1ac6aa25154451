"""JWT access tokens per RFC 9068: header ``typ: at+jwt``; claims ``iss``, ``sub``, ``aud``,
``exp``, ``iat``, ``nbf``, ``jti``, ``client_id``, ``scope``, optional ``act`` (RFC 8693 §4.1)
and ``cnf.jkt`` (RFC 9449 §6)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from tether.credentials.keys import SigningKey, SigningKeys

TYP = "at+jwt"
LEEWAY = 30


def build_claims(
    *,
    issuer: str,
    subject: str,
    client_id: str,
    audience: list[str],
    scopes: Iterable[str],
    now: int,
    ttl: int,
    jti: str,
    act: dict[str, Any] | None = None,
    cnf_jkt: str | None = None,
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience[0] if len(audience) == 1 else audience,
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "jti": jti,
        "client_id": client_id,
        "scope": " ".join(sorted(set(scopes))),
    }
    if act is not None:
        claims["act"] = act
    if cnf_jkt is not None:
        claims["cnf"] = {"jkt": cnf_jkt}
    return claims


def sign(claims: dict[str, Any], key: SigningKey) -> str:
    alg = str(key.alg)
    header = {"typ": TYP, "alg": alg, "kid": str(key.kid)}
    return jwt.encode(header, claims, key, algorithms=[alg])


def verify_own(token: str, keys: SigningKeys, *, issuer: str, now: int) -> dict[str, Any] | None:
    """The claims of a token this server issued and that is still within its lifetime;
    ``None`` for anything else (forged, other issuer, expired, wrong ``typ``, garbage)."""
    try:
        header = jws.extract_compact(token.encode()).headers()
        kid = header.get("kid")
        if str(header.get("typ", "")).lower() not in (TYP, f"application/{TYP}"):
            return None
        key = keys.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            return None
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[str(key.alg)]).claims
    except (JoseError, ValueError, UnicodeError):
        return None
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if claims.get("iss") != issuer or not isinstance(exp, int) or exp <= now:
        return None
    if not isinstance(nbf, int) or nbf > now + LEEWAY:
        return None
    return claims


SUBJECT_TYP = "JWT"  # a subject token is never an access token (RFC 9068 needs at+jwt)


def sign_subject(claims: dict[str, Any], key: SigningKey) -> str:
    alg = str(key.alg)
    header = {"typ": SUBJECT_TYP, "alg": alg, "kid": str(key.kid)}
    return jwt.encode(header, claims, key, algorithms=[alg])


def verify_subject_token(
    token: str, keys: SigningKeys, *, issuer: str, now: int
) -> dict[str, Any] | None:
    """The claims of a live subject token this server minted for a human; else ``None``."""
    try:
        header = jws.extract_compact(token.encode()).headers()
        kid = header.get("kid")
        key = keys.public_key(kid) if isinstance(kid, str) else None
        if key is None or header.get("typ") != SUBJECT_TYP:
            return None
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[str(key.alg)]).claims
    except (JoseError, ValueError, UnicodeError):
        return None
    exp = claims.get("exp")
    if claims.get("iss") != issuer or not isinstance(exp, int) or exp <= now:
        return None
    if claims.get("tether_use") != "subject" or not str(claims.get("sub", "")).startswith("usr_"):
        return None
    return claims
