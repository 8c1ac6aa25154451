"""The deployment's root secrets: the master key and the ledger signing key.

From the environment in production (``TETHER_MASTER_KEY``, ``TETHER_LEDGER_SIGNING_KEY``),
otherwise generated once into the data dir as 0600 files.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.config import Settings
from tether.errors import ConfigurationError

MASTER_KEY_FILE = "master.key"
LEDGER_KEY_FILE = "ledger_signing.pem"


@dataclass(frozen=True)
class RootKeys:
    master_key: bytes
    ledger_key: Ed25519PrivateKey
    created: tuple[Path, ...]  # files written by this call, for the first-start message


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; never overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _master_key(settings: Settings, created: list[Path]) -> bytes:
    if settings.master_key:
        try:
            key = base64.b64decode(settings.master_key, validate=True)
        except ValueError as exc:
            raise ConfigurationError("TETHER_MASTER_KEY is not valid base64") from exc
    else:
        path = settings.data_dir / MASTER_KEY_FILE
        if not path.exists():
            write_private(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            created.append(path)
        key = base64.b64decode(path.read_bytes().strip())
    if len(key) != 32:
        raise ConfigurationError("the master key must be 32 bytes (base64-encoded)")
    return key


def _ledger_key(settings: Settings, created: list[Path]) -> Ed25519PrivateKey:
    if settings.ledger_signing_key:
        pem = settings.ledger_signing_key.encode()
    else:
        path = settings.data_dir / LEDGER_KEY_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(path, pem)
            created.append(path)
        pem = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ConfigurationError("the ledger signing key is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("the ledger signing key must be an Ed25519 key")
    return key


def root_key_files(settings: Settings) -> list[Path]:
    """The root key files this deployment keeps in its data dir (none for a key that comes
    from the environment): what a backup must hold besides the database."""
    out = []
    if not settings.master_key:
        out.append(settings.data_dir / MASTER_KEY_FILE)
    if not settings.ledger_signing_key:
        out.append(settings.data_dir / LEDGER_KEY_FILE)
    return out


def require_root_keys(settings: Settings) -> RootKeys:
    """The existing root keys; raises :class:`ConfigurationError` naming a missing key file
    instead of generating one. For commands run beside a deployment (``tether admin
    recover``, ``tether backup``): a new key there would sign for a deployment it is not."""
    for path in root_key_files(settings):
        if not path.is_file():
            raise ConfigurationError(
                f"no {path.name} in {settings.data_dir} — run this on the server host with the "
                "server's TETHER_DATA_DIR (or its TETHER_MASTER_KEY and TETHER_LEDGER_SIGNING_KEY)",
                path=str(path),
            )
    return load_root_keys(settings)


def load_root_keys(settings: Settings) -> RootKeys:
    created: list[Path] = []
    master = _master_key(settings, created)
    ledger = _ledger_key(settings, created)
    return RootKeys(master_key=master, ledger_key=ledger, created=tuple(created))
