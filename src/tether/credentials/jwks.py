"""Importing public JWKs that agents register (RFC 7517), refusing private material."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

PublicKey = ECKey | OKPKey | RSAKey
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES = {"EC": {"P-256", "P-384", "P-521"}, "OKP": {"Ed25519"}}


def import_public_jwk(jwk: Any) -> PublicKey:
    """A public key from a JWK object; raises ``ValueError`` for private, symmetric, weak or
    malformed keys (a private key sent to a server is a leaked key)."""
    if not isinstance(jwk, dict):
        raise ValueError("must be a JSON object")  # noqa: TRY004 - callers map ValueError to 422
    if _PRIVATE_MEMBERS & set(jwk):
        raise ValueError("contains private key material; send only the public key")
    kty = jwk.get("kty")
    if kty in _CURVES and jwk.get("crv") not in _CURVES[kty]:
        raise ValueError(f"curve {jwk.get('crv')!r} is not supported")
    key: PublicKey
    if kty == "EC":
        key = ECKey.import_key(jwk)
    elif kty == "OKP":
        key = OKPKey.import_key(jwk)
    elif kty == "RSA":
        # Checked before import: joserfc only warns about small moduli.
        if _modulus_bits(jwk.get("n")) < 2048:
            raise ValueError("RSA keys must be at least 2048 bits")
        key = RSAKey.import_key(jwk)
    else:
        raise ValueError(f"kty {kty!r} is not supported (EC, OKP or RSA public keys only)")
    return key


def _modulus_bits(n: Any) -> int:
    if not isinstance(n, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw, "big").bit_length()
