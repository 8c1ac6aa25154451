"""Ed25519 signatures over ledger checkpoints (RFC 8032 via ``cryptography``)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tether.audit.chain import Checkpoint, checkpoint_payload


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LedgerVerifier:
    """Checks checkpoints with the ledger's public key alone: what an auditor holds."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key_b64 = _b64url(raw)
        # Key id: the first 16 bytes of SHA-256 over the raw public key, hex.
        self.key_id = hashlib.sha256(raw).hexdigest()[:32]

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), for ``audit verify --public-key``."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def check(self, cp: Checkpoint) -> bool:
        if cp.key_id != self.key_id:
            return False
        try:
            self.public_key.verify(
                _b64url_decode(cp.signature), checkpoint_payload(cp.size, cp.head_hash, cp.time_us)
            )
        except (InvalidSignature, ValueError):
            return False
        return True


class LedgerSigner(LedgerVerifier):
    def __init__(self, key: Ed25519PrivateKey) -> None:
        super().__init__(key.public_key())
        self._key = key

    def sign(self, size: int, head_hash: str, time_us: int) -> Checkpoint:
        sig = self._key.sign(checkpoint_payload(size, head_hash, time_us))
        return Checkpoint(size, head_hash, time_us, self.key_id, _b64url(sig))
