"""DPoP proofs per RFC 9449: check a ``DPoP`` header (§4.3) and a token's key binding (§7.1).

Framework-independent: the caller passes the header values, the method, the request URL and
``now``; nothing here reads a request or a clock. The JOSE work (JWS verification, RFC 7638
thumbprints) is joserfc's, over ``cryptography``; this module only decides. Every failure is
one :class:`InvalidDPoPProof` whose ``details["reason"]`` names the check that failed.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from joserfc import jwk, jws
from joserfc.errors import JoseError

from tether import jsonutil
from tether.clock import Clock, SystemClock
from tether.credentials.dpop_nonce import DPoPNonces
from tether.credentials.errors import DPoPBindingMismatch, InvalidDPoPProof, UseDPoPNonce
from tether.credentials.htu import normalize_htu
from tether.credentials.jose import AllowListRegistry
from tether.db.text import unstorable

__all__ = [
    "DEFAULT_ALGS",
    "DPoPBindingMismatch",
    "DPoPProof",
    "DPoPReplayCache",
    "InvalidDPoPProof",
    "MemoryDPoPReplayCache",
    "UseDPoPNonce",
    "access_token_hash",
    "jwk_thumbprint",
    "normalize_htu",
    "require_binding",
    "verify_proof",
]

DEFAULT_ALGS = frozenset({"ES256", "ES384", "EdDSA", "Ed25519", "PS256", "RS256"})
_PROOF_TYP = "dpop+jwt"
# Members that only a private or symmetric JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ASYMMETRIC_KTYS = frozenset({"EC", "RSA", "OKP"})
_MIN_RSA_BITS = 2048
_MAX_JTI_LENGTH = 256
# A proof carries a key and a few short claims; an RSA-4096 proof is about 2 KiB.
_MAX_PROOF_LENGTH = 8192
_NONCE_MESSAGES = {
    "nonce_missing": "this server requires a nonce in DPoP proofs",
    "nonce_invalid": "the nonce is not one this server issued",
    "nonce_expired": "the nonce has expired",
}
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _reject(reason: str, message: str) -> NoReturn:
    raise InvalidDPoPProof(f"DPoP proof rejected: {message}", reason=reason)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk_value: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a JWK, base64url without padding.

    Only the key type's required members count, so ``kid``, ``alg`` or private members do
    not change it. Raises ``ValueError`` if the mapping is not a valid JWK.
    """
    try:
        return jwk.import_key(dict(jwk_value)).thumbprint()
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a valid JWK: {exc}") from exc


def access_token_hash(token: str) -> str:
    """The ``ath`` claim (RFC 9449 §4.2): base64url(SHA-256(ASCII(token))).

    Raises ``ValueError`` (``UnicodeEncodeError``) if the token is not ASCII.
    """
    return _b64url(hashlib.sha256(token.encode("ascii")).digest())


@dataclass(frozen=True)
class DPoPProof:
    """A proof that passed every check; ``jkt`` is the RFC 7638 thumbprint of ``jwk``."""

    jkt: str
    jti: str
    iat: int
    htm: str
    htu: str
    jwk: dict[str, Any]
    ath: str | None
    nonce: str | None


class DPoPReplayCache(Protocol):
    def seen(self, jkt: str, jti: str, expires_at: int) -> bool:
        """True if (jkt, jti) was already recorded (a replay); else record it until
        ``expires_at`` (epoch seconds) and return False. Must be atomic across callers."""
        ...


class MemoryDPoPReplayCache:
    """Process-local replay cache: thread-safe, but not shared between workers.

    Entries are dropped once ``expires_at`` has passed by ``clock`` (the clock that gives
    :func:`verify_proof` its ``now``); until then the proof's ``iat`` window could still
    admit the proof, so the entry must stay.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], int] = {}
        self._expiries: list[tuple[int, tuple[str, str]]] = []  # min-heap over _entries

    def seen(self, jkt: str, jti: str, expires_at: int) -> bool:
        now = int(self._clock.now().timestamp())
        key = (jkt, jti)
        with self._lock:
            while self._expiries and self._expiries[0][0] < now:
                expiry, old = heapq.heappop(self._expiries)
                if self._entries.get(old) == expiry:
                    del self._entries[old]
            if key in self._entries:
                return True
            self._entries[key] = expires_at
            heapq.heappush(self._expiries, (expires_at, key))
            return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class _ProofRegistry(AllowListRegistry):
    """Proofs are small: keep joserfc's payload cap tight."""

    max_payload_length = 4096


def verify_proof(
    header_values: Sequence[str],
    *,
    method: str,
    url: str,
    now: int,
    access_token: str | None = None,
    replay_cache: DPoPReplayCache | None = None,
    max_age: int = 300,
    leeway: int = 5,
    allowed_algs: frozenset[str] = DEFAULT_ALGS,
    nonces: DPoPNonces | None = None,
) -> DPoPProof:
    """Check the ``DPoP`` request header per RFC 9449 §4.3 and return the verified proof.

    ``header_values`` are all values of the ``DPoP`` header (exactly one is allowed);
    ``method`` and ``url`` describe the request as the server received it; ``now`` is epoch
    seconds. With ``access_token`` (a resource request) the proof's ``ath`` must match it.
    With ``nonces`` the proof's ``nonce`` must be one of them, still accepted at ``now``;
    :class:`UseDPoPNonce` otherwise. The replay cache is consulted last, so a proof failing
    another check (its nonce included) never uses up its ``jti``. Raises
    :class:`InvalidDPoPProof` on any failure.
    """
    if isinstance(header_values, str):
        raise TypeError("header_values is the list of DPoP header values, not one string")
    if len(header_values) != 1:
        _reject("header_count", f"expected one DPoP header, got {len(header_values)}")
    value = header_values[0]
    obj = _parse_compact(value)
    header = obj.headers()
    if not isinstance(header, dict):
        _reject("malformed", "the JWS header is not a JSON object")

    alg = _check_header(header, allowed_algs)
    key = _import_public_key(header["jwk"])
    try:
        # Header members joserfc does not know are ignored, as RFC 7515 §4 asks.
        registry = _ProofRegistry(algorithms=[alg], strict_check_header=False)
        verified = jws.validate_compact(obj, key, registry=registry)
    except (JoseError, ValueError) as exc:
        _reject("jwk_alg", f"the header or jwk does not fit alg {alg}: {exc}")
    if not verified:
        _reject("bad_signature", "the signature does not verify with the embedded jwk")

    claims = _parse_claims(obj.payload)
    jti, iat = _check_claims(claims, method=method, url=url, now=now, age=max_age, leeway=leeway)
    ath, nonce = claims.get("ath"), claims.get("nonce")
    if ath is not None and not isinstance(ath, str):
        _reject("malformed_ath", "ath must be a string")
    if nonce is not None and not isinstance(nonce, str):
        _reject("malformed_nonce", "nonce must be a string")
    if access_token is not None:
        if ath is None:
            _reject("ath_missing", "ath is required when an access token is presented")
        if not _ath_matches(ath, access_token):
            _reject("ath_mismatch", "ath does not match the access token")

    jkt = key.thumbprint()
    if nonces is not None:
        _check_nonce(nonces, nonce, now, jkt)
    if replay_cache is not None and replay_cache.seen(jkt, jti, iat + max_age + leeway):
        _reject("replay", "this jti was already used with this key")
    return DPoPProof(
        jkt=jkt,
        jti=jti,
        iat=iat,
        htm=claims["htm"],
        htu=claims["htu"],
        jwk=dict(header["jwk"]),
        ath=ath,
        nonce=nonce,
    )


def require_binding(proof: DPoPProof | None, cnf_jkt: str | None) -> None:
    """Resource-server rule of RFC 9449 §7.1: a token bound by ``cnf.jkt`` needs a proof by
    that key. Returns None if the token is unbound (nothing required) or the keys match;
    raises :class:`DPoPBindingMismatch` if the proof is missing or made with another key.
    """
    if cnf_jkt is None:
        return
    if proof is None:
        raise DPoPBindingMismatch(
            "DPoP proof rejected: the token is DPoP-bound and no proof was sent",
            reason="proof_missing",
        )
    if not hmac.compare_digest(proof.jkt, cnf_jkt):
        raise DPoPBindingMismatch(
            "DPoP proof rejected: the proof key is not the key the token is bound to",
            reason="jkt_mismatch",
        )


def _check_nonce(nonces: DPoPNonces, nonce: str | None, now: int, jkt: str) -> None:
    problem = nonces.problem(nonce, now)
    if problem is not None:
        raise UseDPoPNonce(
            f"DPoP proof rejected: {_NONCE_MESSAGES[problem]}; sign a new proof with the nonce "
            "from the DPoP-Nonce response header",
            reason=problem,
            jkt=jkt,
        )


def _parse_compact(value: str) -> jws.CompactSignature:
    if len(value) > _MAX_PROOF_LENGTH or not _COMPACT_JWS.fullmatch(value):
        _reject("malformed", "the DPoP header is not a compact JWS")
    try:
        return jws.extract_compact(value.encode("ascii"), registry=_ProofRegistry())
    except (JoseError, ValueError, TypeError) as exc:
        _reject("malformed", f"the DPoP header is not a compact JWS: {exc}")


def _check_header(header: dict[str, Any], allowed_algs: frozenset[str]) -> str:
    if header.get("typ") != _PROOF_TYP:
        _reject("typ", f"typ must be {_PROOF_TYP!r}")
    alg = header.get("alg")
    # "none" and MACs are refused even if a caller lists them: a proof must show possession
    # of a private key (§4.2).
    if not isinstance(alg, str) or alg == "none" or alg.startswith("HS"):
        _reject("alg", "alg must name an asymmetric signature algorithm")
    if alg not in allowed_algs:
        _reject("alg", f"alg {alg} is not allowed")
    if "crit" in header:
        _reject("crit", "no critical header extensions are supported")
    jwk_value = header.get("jwk")
    if not isinstance(jwk_value, dict):
        _reject("jwk_missing", "the header has no jwk object")
    return alg


def _import_public_key(jwk_value: dict[str, Any]) -> jwk.Key:
    if _PRIVATE_MEMBERS & jwk_value.keys():
        _reject("jwk_private", "jwk must be a public key without private members")
    kty = jwk_value.get("kty")
    if not isinstance(kty, str) or kty not in _ASYMMETRIC_KTYS:
        _reject("jwk_kty", "jwk must be an EC, RSA or OKP public key")
    # Sized before import: joserfc would accept a short modulus with a warning, which an
    # attacker could then trigger on every request.
    if kty == "RSA" and _modulus_bits(jwk_value.get("n")) < _MIN_RSA_BITS:
        _reject("jwk_weak", f"RSA keys must have at least {_MIN_RSA_BITS} bits")
    try:
        key = jwk.import_key(jwk_value)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        _reject("jwk_invalid", f"jwk is not a valid key: {exc}")
    if key.is_private:
        _reject("jwk_private", "jwk must be a public key")
    return key


def _modulus_bits(n: object) -> int:
    """Bit length of a JWK's base64url ``n``; 0 when it is not one."""
    if not isinstance(n, str) or not _B64URL.fullmatch(n):
        return 0
    try:
        modulus = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except ValueError:  # binascii.Error: a length no encoder produces
        return 0
    return int.from_bytes(modulus).bit_length()


def _parse_claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = jsonutil.loads(payload)
    except ValueError:
        _reject("malformed_claims", "the payload is not JSON")
    if not isinstance(claims, dict):
        _reject("malformed_claims", "the payload is not a JSON object")
    return claims


def _check_claims(
    claims: dict[str, Any], *, method: str, url: str, now: int, age: int, leeway: int
) -> tuple[str, int]:
    """Checks jti, htm, htu and iat; returns (jti, iat)."""
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH or unstorable(jti):
        _reject("jti", f"jti must be a string of 1 to {_MAX_JTI_LENGTH} characters, no NUL")
    htm = claims.get("htm")
    if not isinstance(htm, str):
        _reject("htm", "htm is missing")
    if htm != method:  # methods are case-sensitive (RFC 9110 §9.1)
        _reject("htm_mismatch", "htm does not match the request method")
    htu = claims.get("htu")
    if not isinstance(htu, str):
        _reject("htu", "htu is missing")
    try:
        expected = normalize_htu(url)
    except ValueError:
        _reject("htu_mismatch", "the request URL cannot be normalized")
    try:
        matches = normalize_htu(htu) == expected
    except ValueError:
        matches = False
    if not matches:
        _reject("htu_mismatch", "htu does not match the request URL")
    iat = claims.get("iat")
    # NumericDate may be fractional (RFC 7519 §2); bool is an int in Python, not in JSON.
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        _reject("iat", "iat must be a number")
    if isinstance(iat, float) and not math.isfinite(iat):
        _reject("iat", "iat must be a finite number")
    iat = math.floor(iat)
    if iat < now - age - leeway:
        _reject("iat_expired", "iat is too old")
    if iat > now + leeway:
        _reject("iat_future", "iat is in the future")
    return jti, iat


def _ath_matches(ath: str, access_token: str) -> bool:
    try:
        expected = access_token_hash(access_token)
    except ValueError:
        return False
    return hmac.compare_digest(ath.encode(), expected.encode())
