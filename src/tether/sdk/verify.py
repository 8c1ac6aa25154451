"""Offline verification of Tether's JWT access tokens, per RFC 9068 §4.

A resource server calls :func:`verify_access_token` with the raw token from the
``Authorization`` header; it checks, in this order, and stops at the first failure:

1. the JWS compact form and header: ``typ`` is ``at+jwt`` (RFC 9068 §4), ``alg`` is on an
   asymmetric allow-list (never ``none`` nor ``HS*``, RFC 8725 §3.1), ``kid`` names a key
   in the issuer's JWK Set, no ``crit`` extension (RFC 7515 §4.1.11: we understand none);
2. the signature, with that key only, whose type and curve must fit ``alg``;
3. ``iss`` equals the issuer, ``aud`` contains the audience (RFC 9068 §4), ``exp``, ``nbf``
   and ``iat`` against ``now`` with ``leeway`` (RFC 7519 §4.1), and the presence of
   ``sub``, ``client_id``, ``jti`` (RFC 9068 §2.2);
4. the sender constraint: a token with ``cnf.jkt`` needs a DPoP proof checker and must not
   arrive with the ``Bearer`` scheme (RFC 9449 §7.2);
5. the revocation hook (Tether's kill switch), then the required scopes (RFC 6750 §3.1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwa import JWSAlgModel
from joserfc.jws import CompactSignature, JWSRegistry, extract_compact, validate_compact
from joserfc.jwt import ClaimsOption, JWTClaimsRegistry

from tether.sdk.claims import AccessTokenClaims
from tether.sdk.errors import InsufficientScope, InvalidToken, JWKSUnavailable
from tether.sdk.jwks import JWKSCache

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AccessTokenClaims",
    "DPoPCheck",
    "InsufficientScope",
    "InvalidToken",
    "JWKSCache",
    "JWKSUnavailable",
    "RevocationCheck",
    "verify_access_token",
]

#: Asymmetric algorithms this SDK verifies. ES256 is what Tether issues by default; the others
#: verify only with a JWK of the matching type and curve. "EdDSA" is the RFC 8037 name that
#: RFC 9864 deprecates in favour of "Ed25519"; issuers still emit both.
DEFAULT_ALGORITHMS: frozenset[str] = frozenset({"ES256", "ES384", "EdDSA", "Ed25519"})

#: Called with the verified claims; True means revoked, and the token is refused. This is where
#: a resource server plugs Tether's kill switch and revocation feed: check ``claims.jti``, the
#: agent ``claims.sub`` and every agent in ``claims.chain`` (a revoked actor anywhere in the
#: chain revokes the token). It runs on every call, so it should be an in-memory look-up.
RevocationCheck = Callable[[AccessTokenClaims], bool]

#: Checks the request's DPoP proof for a DPoP-bound token (RFC 9449 §4.3 and §7.1): called
#: with the access token (for ``ath``) and its verified claims (for ``cnf.jkt``); returns on
#: success and raises :class:`InvalidToken` (``error="invalid_dpop_proof"`` is apt) otherwise.
#: The caller binds the proof, method and URL of the request into the callable.
DPoPCheck = Callable[[str, AccessTokenClaims], None]

_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})


class _OneAlgorithm(JWSRegistry):
    """A JWS registry that allows exactly one algorithm and ignores unknown header members.

    ``get_alg`` skips joserfc's per-call SecurityWarning for "EdDSA": the check is the same
    as for "Ed25519", and a warning per request would flood logs. Unknown header members are
    ignored as RFC 7515 §4 asks; ``crit`` is refused before this registry is used.
    """

    def __init__(self, alg: str) -> None:
        super().__init__(algorithms=[alg], strict_check_header=False)
        self._only = alg

    def get_alg(self, name: str) -> JWSAlgModel:
        if name != self._only:
            raise InvalidToken(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


_REGISTRIES = {alg: _OneAlgorithm(alg) for alg in DEFAULT_ALGORITHMS}
# Only size limits of the default registry are used while the header is still unverified.
_EXTRACT_REGISTRY = JWSRegistry(strict_check_header=False)

_CLAIM_PROBLEMS = {
    "iss": "the access token was issued by another issuer",
    "aud": "the access token is not meant for this audience",
    "nbf": "the access token is not valid yet",
    "iat": "the access token was issued in the future",
}


def verify_access_token(
    token: str,
    *,
    issuer: str,
    audience: str,
    jwks: JWKSCache,
    now: int | None = None,
    leeway: int = 30,
    required_scopes: Iterable[str] = (),
    revocation_check: RevocationCheck | None = None,
    dpop: DPoPCheck | None = None,
    scheme: str | None = None,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
) -> AccessTokenClaims:
    """Verify an RFC 9068 access token issued by ``issuer`` for ``audience``.

    ``now`` is NumericDate seconds (default: the system time); ``leeway`` seconds of clock
    skew are tolerated on ``exp``, ``nbf`` and ``iat``. ``scheme`` is the HTTP authentication
    scheme the token came with (``"Bearer"`` or ``"DPoP"``, any case), or None when it did
    not come from an ``Authorization`` header. A DPoP-bound token (``cnf.jkt``) is refused
    without a ``dpop`` checker or with the Bearer scheme (RFC 9449 §7.2); an unbound token is
    refused with the DPoP scheme. See :data:`RevocationCheck` and :data:`DPoPCheck` for the
    hooks.

    Returns the verified claims. Raises :class:`InsufficientScope` when the token lacks one of
    ``required_scopes``, :class:`JWKSUnavailable` when no signing key can be fetched, and
    :class:`InvalidToken` for every other failure. Raises ValueError or TypeError for a
    wrong argument (an algorithm outside :data:`DEFAULT_ALGORITHMS`, a bare string as
    ``required_scopes``, an unknown ``scheme``).
    """
    required = _required_scopes(required_scopes)
    allowed = frozenset(algorithms)
    if not allowed or not allowed <= DEFAULT_ALGORITHMS:
        raise ValueError(f"algorithms must be a non-empty subset of {sorted(DEFAULT_ALGORITHMS)}")
    if scheme is not None and scheme.lower() not in ("bearer", "dpop"):
        raise ValueError(f"unknown authentication scheme {scheme!r}")
    if leeway < 0:
        raise ValueError("leeway must not be negative")

    signed = _extract(token)
    alg, kid = _check_header(signed.headers(), allowed)
    key = jwks.get_key(kid)
    if key is None:
        raise InvalidToken("no signing key of the issuer matches the token's 'kid'")
    try:
        valid = validate_compact(signed, key, registry=_REGISTRIES[alg])
    except JoseError as exc:  # the key's type, curve, "use" or "alg" does not fit
        raise InvalidToken("the token's signing key does not fit its algorithm") from exc
    if not valid:
        raise InvalidToken("the access token's signature is invalid")

    payload = _payload(signed)
    _check_registered_claims(payload, issuer=issuer, audience=audience, now=now, leeway=leeway)
    claims = AccessTokenClaims.from_payload(payload)
    _check_binding(token, claims, scheme=scheme, dpop=dpop)
    if revocation_check is not None and revocation_check(claims):
        raise InvalidToken("the access token has been revoked")
    missing = required - claims.scopes
    if missing:
        raise InsufficientScope(required, missing)
    return claims


def _required_scopes(scopes: Iterable[str]) -> frozenset[str]:
    if isinstance(scopes, str):
        raise TypeError("required_scopes is a collection of scopes, not one string")
    required = frozenset(scopes)
    if any(not s or " " in s for s in required):
        raise ValueError("a required scope must be one non-empty scope token")
    return required


def _extract(token: str) -> CompactSignature:
    try:
        return extract_compact(token.encode("ascii"), registry=_EXTRACT_REGISTRY)
    except (JoseError, UnicodeEncodeError, ValueError) as exc:
        raise InvalidToken("the access token is not a signed JWT") from exc


def _check_header(header: object, allowed: frozenset[str]) -> tuple[str, str]:
    if not isinstance(header, dict):
        raise InvalidToken("the access token's header is not a JSON object")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _AT_JWT_TYPES:
        raise InvalidToken("the token is not a JWT access token (header 'typ' is not at+jwt)")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise InvalidToken("the token's signing algorithm is not allowed")
    if "crit" in header:
        raise InvalidToken("the token requires JWS extensions this resource server lacks")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("the token's header names no signing key ('kid')")
    try:  # the types of registered members such as "jwk" or "x5c" (RFC 7515 §4.1)
        _REGISTRIES[alg].check_header(header)
    except JoseError as exc:
        raise InvalidToken("the access token's header is malformed") from exc
    return alg, kid


def _payload(signed: CompactSignature) -> dict[str, Any]:
    try:
        payload = json.loads(signed.payload)
    except (TypeError, ValueError) as exc:
        raise InvalidToken("the access token's payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidToken("the access token's payload is not a JSON object")
    return payload


def _check_registered_claims(
    payload: dict[str, Any], *, issuer: str, audience: str, now: int | None, leeway: int
) -> None:
    essential: ClaimsOption = {"essential": True}
    registry = JWTClaimsRegistry(
        now=now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub=essential,
        exp=essential,
        iat=essential,
        jti=essential,
        client_id=essential,
    )
    try:
        registry.validate(payload)
    except ExpiredTokenError as exc:
        raise InvalidToken("the access token has expired") from exc
    except MissingClaimError as exc:
        raise InvalidToken(f"the access token lacks required claims: {exc.claim}") from exc
    except ClaimError as exc:
        problem = _CLAIM_PROBLEMS.get(exc.claim, f"the access token's '{exc.claim}' is invalid")
        raise InvalidToken(problem) from exc


def _check_binding(
    token: str, claims: AccessTokenClaims, *, scheme: str | None, dpop: DPoPCheck | None
) -> None:
    """RFC 9449 §7.1 and §7.2: the scheme, the binding and the proof must agree."""
    via = scheme.lower() if scheme is not None else None
    if not claims.dpop_bound:
        if via == "dpop":
            raise InvalidToken("the DPoP scheme was used with a token that is not DPoP-bound")
        return
    if via == "bearer":
        raise InvalidToken("a DPoP-bound access token must use the DPoP scheme, not Bearer")
    if dpop is None:
        raise InvalidToken("the access token is DPoP-bound and no DPoP proof can be checked")
    dpop(token, claims)
