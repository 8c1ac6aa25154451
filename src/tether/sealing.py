"""Sealing data under the master key: AES-256-GCM (NIST SP 800-38D) via ``cryptography``.

A sealed value is ``v1.<base64url(nonce || ciphertext+tag)>``; the associated data binds it
to its purpose and owner (e.g. ``signing-key:<kid>``), so a sealed blob moved to another
row does not open.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether.errors import ConfigurationError

_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(master_key: bytes, plaintext: bytes, *, aad: str) -> str:
    nonce = os.urandom(12)  # 96-bit random nonce; keys seal far fewer than 2**32 values
    return f"{_VERSION}.{_b64(nonce + AESGCM(master_key).encrypt(nonce, plaintext, aad.encode()))}"


def unseal(master_key: bytes, sealed: str, *, aad: str) -> bytes:
    """The plaintext; raises :class:`ConfigurationError` if the key or the binding is wrong."""
    version, _, body = sealed.partition(".")
    if version != _VERSION:
        raise ConfigurationError(f"unknown sealed-value version {version!r}")
    raw = _unb64(body)
    try:
        return AESGCM(master_key).decrypt(raw[:12], raw[12:], aad.encode())
    except InvalidTag as exc:
        raise ConfigurationError(
            "a sealed value does not open with this master key (was TETHER_MASTER_KEY changed?)"
        ) from exc
