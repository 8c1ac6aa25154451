"""The secrets broker's tables: secrets, their encrypted versions, the keys that wrap them,
and the leases handed to agents. No value, data key or generated password is ever stored in
clear: a version holds its value sealed under its own data key, and that data key sealed
under a secrets master key, itself sealed under the deployment's root master key."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class SecretKeyRow(Base):
    """A secrets master key (``smk_…``): 32 random bytes sealed under the root master key.
    The newest one not retired wraps new data keys; a rotation re-wraps every data key under
    a new one and retires the rest. In the database, so every node has it at once."""

    __tablename__ = "secret_master_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    retired_at: Mapped[int | None] = mapped_column(BigInteger)


class SecretRow(Base):
    """A secret's metadata. Deleting it drops its versions and keeps this row as a tombstone
    (``deleted_at``), so a name put again continues its version numbers: a ciphertext bound
    to (name, version) can never match another value's binding."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[str] = mapped_column(Text)  # canonical JSON list of strings, sorted
    broker_only: Mapped[bool] = mapped_column(Boolean)
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)  # the current (latest) version
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger)


class SecretVersionRow(Base):
    __tablename__ = "secret_versions"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))  # the secrets master key wrapping data_key
    data_key: Mapped[str] = mapped_column(Text)  # sealed under that key, bound to name+version
    ciphertext: Mapped[str] = mapped_column(Text)  # sealed under the data key, bound likewise
    size: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_secret_versions_key_id", "key_id"),)


class LeaseRow(Base):
    """A value handed to an agent for a while (``lse_…``): its use is on the record, and a
    revocation (one by one, or every lease of an agent that is killed, suspended, frozen or
    expires) ends it and is named in the revocation feed."""

    __tablename__ = "secret_leases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(String(40))
    issued_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    renewed_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_by: Mapped[str | None] = mapped_column(String(80))
    revoked_why: Mapped[str | None] = mapped_column(String(200))
    # A database login's lease (name ``db/<role>``): the login minted for it, and when it
    # was dropped from the database (after the lease ended; maintenance finishes any left).
    login: Mapped[str | None] = mapped_column(String(63))
    dropped_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_secret_leases_agent_id_expires_at", "agent_id", "expires_at"),
        Index("ix_secret_leases_name", "name"),
        Index("ix_secret_leases_revoked_at", "revoked_at"),
    )


class DatabaseConnectionRow(Base):
    """A database the broker mints logins on: its admin DSN is a secret (``dsn_secret``,
    best broker-only), read by the broker only, never by an agent."""

    __tablename__ = "secret_db_connections"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dsn_secret: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)


class DatabaseRoleRow(Base):
    """A kind of login an agent may lease: SQL templates run on the connection to create the
    login (``{{name}}``, ``{{password}}``, ``{{expiry}}``) and to drop it (``{{name}}``)."""

    __tablename__ = "secret_db_roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    connection: Mapped[str] = mapped_column(String(64))
    creation: Mapped[str] = mapped_column(Text)
    revocation: Mapped[str | None] = mapped_column(Text)
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)
