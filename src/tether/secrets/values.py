"""What the secrets broker says about secrets and leases (never a value but in a read), and
the rules for what a caller may name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tether.clock import from_micros, to_rfc3339
from tether.errors import ValidationFailed
from tether.jsonutil import loads
from tether.secrets.envelope import Sealed
from tether.secrets.models import LeaseRow, SecretRow, SecretVersionRow

NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
# Path segments of the API under /v1/secrets/ that a secret's name cannot be.
RESERVED = frozenset({"leases", "rotate-master-key", "db"})
LABEL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
MAX_LABELS = 32
MAX_DESCRIPTION = 1000
_NAME = re.compile(NAME_PATTERN)
_LABEL = re.compile(LABEL_PATTERN)


def check_name(name: str, *, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationFailed(
            "a secret's name is 1-128 characters of A-Z, a-z, 0-9, '_', '.' and '-'",
            field=field,
        )
    if name in RESERVED:
        raise ValidationFailed(f"{name!r} is a path of the API, not a secret's name",
                               field=field)  # fmt: skip
    return name


def check_labels(labels: list[str]) -> list[str]:
    if len(labels) > MAX_LABELS:
        raise ValidationFailed(f"at most {MAX_LABELS} labels", field="labels")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ValidationFailed(
                "a label is 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
                field=f"labels[{i}]",
            )
    return sorted(set(labels))


def check_value(value: bytes, max_bytes: int) -> bytes:
    if not value:
        raise ValidationFailed("the value is empty: a secret needs at least one byte",
                               field="value")  # fmt: skip
    if len(value) > max_bytes:
        raise ValidationFailed(
            f"the value is {len(value):,} bytes; at most {max_bytes:,} (TETHER_SECRET_MAX_BYTES)",
            field="value",
        )
    return value


def _time(us: int | None) -> str | None:
    return to_rfc3339(from_micros(us)) if us is not None else None


@dataclass(frozen=True, slots=True)
class SecretInfo:
    name: str
    description: str | None
    labels: list[str]
    broker_only: bool
    lease_seconds: int | None
    version: int
    versions: list[int]
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, row: SecretRow, versions: list[int]) -> SecretInfo:
        return cls(row.name, row.description, list(loads(row.labels)), row.broker_only,
                   row.lease_seconds, row.version, versions, row.created_at,
                   row.updated_at)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "labels": self.labels,
            "broker_only": self.broker_only, "lease_seconds": self.lease_seconds,
            "version": self.version, "versions": self.versions,
            "created_at": _time(self.created_at), "updated_at": _time(self.updated_at),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: int
    size: int
    key_id: str
    created_by: str
    created_at: int
    current: bool

    @classmethod
    def of(cls, row: SecretVersionRow, current: int) -> VersionInfo:
        return cls(row.name, row.version, row.size, row.key_id, row.created_by, row.created_at,
                   row.version == current)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "size": self.size,
                "key_id": self.key_id, "created_by": self.created_by,
                "created_at": _time(self.created_at), "current": self.current}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    name: str
    version: int
    agent_id: str
    issued_at: int
    expires_at: int
    renewed_at: int | None
    revoked_at: int | None
    revoked_by: str | None
    revoked_why: str | None
    login: str | None = None  # a database login's lease: the login's name

    @classmethod
    def of(cls, row: LeaseRow) -> Lease:
        return cls(row.id, row.name, row.version, row.agent_id, row.issued_at, row.expires_at,
                   row.renewed_at, row.revoked_at, row.revoked_by, row.revoked_why,
                   row.login)  # fmt: skip

    def state(self, now_us: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now_us else "active"

    def to_json(self, now_us: int) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "version": self.version, "agent": self.agent_id,
            "state": self.state(now_us), "issued_at": _time(self.issued_at),
            "expires_at": _time(self.expires_at), "renewed_at": _time(self.renewed_at),
            "revoked_at": _time(self.revoked_at), "revoked_by": self.revoked_by,
            "revoked_why": self.revoked_why, "login": self.login,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What a read needs before its decision: the current version, its attributes for
    Cedar, and the sealed value of the version wanted (None if that version is not kept)."""

    version: int
    broker_only: bool
    lease_seconds: int | None
    labels: list[str]
    sealed: Sealed | None = None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> SecretMeta:
        """From ``(version, broker_only, lease_seconds, labels, key_id, data_key,
        ciphertext)`` (:meth:`DatabaseSecretStore.current`)."""
        version, broker_only, lease_seconds, labels, key_id, data_key, ciphertext = row
        sealed = Sealed(key_id, data_key, ciphertext) if key_id else None
        return cls(version, bool(broker_only), lease_seconds, list(loads(labels)), sealed)

    @property
    def properties(self) -> dict[str, Any]:
        return {"labels": self.labels, "broker_only": self.broker_only}


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A read's answer: the value, and the lease it is held under."""

    name: str
    value: bytes
    version: int
    lease: Lease
    expires_in: int

    def to_json(self) -> dict[str, Any]:
        # Values are text (JSON); a value that is not UTF-8 was refused when it was put.
        return {"name": self.name, "value": self.value.decode(), "version": self.version,
                "lease_id": self.lease.id, "expires_in": self.expires_in}  # fmt: skip
