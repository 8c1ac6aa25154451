"""Envelope encryption of secret versions (AES-256-GCM, NIST SP 800-38D, via ``cryptography``).

Three layers, each sealed with :func:`tether.sealing.seal` (a random 96-bit nonce per
seal) and bound by its associated data to where it belongs:

- the root master key (``TETHER_MASTER_KEY`` / ``master.key``, the same on every node) seals
  each **secrets master key** (``secrets-master-key:<id>``), kept in the database;
- a secrets master key seals each version's own **data key**
  (``secret-data-key:<name>:<version>:<key id>``);
- the data key seals the **value** (``secret:<name>:<version>``).

A ciphertext or data key copied to another row, another version or another key id does not
open, and neither does anything under another root key: every failure is
:class:`~tether.errors.SecretUnreadable`, never a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tether.errors import ConfigurationError, SecretUnreadable
from tether.sealing import seal, unseal


def master_aad(key_id: str) -> str:
    return f"secrets-master-key:{key_id}"


def _data_key_aad(name: str, version: int, key_id: str) -> str:
    return f"secret-data-key:{name}:{version}:{key_id}"


def _value_aad(name: str, version: int) -> str:
    return f"secret:{name}:{version}"


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str  # the secrets master key that wraps data_key
    data_key: str
    ciphertext: str


def new_key() -> bytes:
    return os.urandom(32)


def encrypt(key_id: str, key: bytes, name: str, version: int, value: bytes) -> Sealed:
    """``value`` under a fresh data key, the data key under the secrets master key ``key``."""
    data_key = new_key()
    return Sealed(
        key_id,
        seal(key, data_key, aad=_data_key_aad(name, version, key_id)),
        seal(data_key, value, aad=_value_aad(name, version)),
    )


def decrypt(key: bytes, sealed: Sealed, name: str, version: int) -> bytes:
    """The value; raises :class:`SecretUnreadable` if any layer does not open here."""
    data_key = _open(key, sealed.data_key, _data_key_aad(name, version, sealed.key_id), name,
                     version)  # fmt: skip
    return _open(data_key, sealed.ciphertext, _value_aad(name, version), name, version)


def rewrap(old: bytes, new: tuple[str, bytes], sealed: Sealed, name: str, version: int) -> Sealed:
    """The same ciphertext, its data key sealed under the secrets master key ``new`` (id,
    key) instead."""
    new_id, new_key = new
    data_key = _open(old, sealed.data_key, _data_key_aad(name, version, sealed.key_id), name,
                     version)  # fmt: skip
    return Sealed(new_id, seal(new_key, data_key, aad=_data_key_aad(name, version, new_id)),
                  sealed.ciphertext)  # fmt: skip


def _open(key: bytes, blob: str, aad: str, name: str, version: int) -> bytes:
    try:
        return unseal(key, blob, aad=aad)
    except (ConfigurationError, ValueError) as exc:  # a wrong key or binding; a mangled blob
        raise SecretUnreadable(
            f"secret {name!r} version {version} does not decrypt: its stored ciphertext or key "
            "was altered or moved from another row (restore it from a backup, or put a new "
            "version)",
            name=name,
            version=version,
        ) from exc
