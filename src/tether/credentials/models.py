"""Tables for agent credentials, token signing keys, issued tokens and replay caches."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class SigningKeyRow(Base):
    """A token signing key. ``next`` keys are published before use; ``retired`` keys stay
    published until ``unpublish_at`` (the expiry of the last token they signed)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # next | active | retired
    private_sealed: Mapped[str] = mapped_column(Text)  # AES-GCM under the master key
    public_jwk: Mapped[str] = mapped_column(Text)  # canonical JSON
    created_at: Mapped[int] = mapped_column(BigInteger)
    activated_at: Mapped[int | None] = mapped_column(BigInteger)
    retired_at: Mapped[int | None] = mapped_column(BigInteger)
    unpublish_at: Mapped[int | None] = mapped_column(BigInteger)


class CredentialRow(Base):
    __tablename__ = "agent_credentials"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    type: Mapped[str] = mapped_column(String(16))  # api_key | public_key
    secret_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    jwk: Mapped[str | None] = mapped_column(Text)  # public JWK, canonical JSON
    jkt: Mapped[str | None] = mapped_column(String(64))  # RFC 7638 thumbprint of jwk
    scopes: Mapped[str | None] = mapped_column(Text)  # JSON list: a ceiling, or null
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_agent_credentials_agent_id", "agent_id"),)


class AccessTokenRow(Base):
    """Every issued access token by ``jti`` (never the token): for revocation and kill."""

    __tablename__ = "access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(40))
    client_id: Mapped[str] = mapped_column(String(40))
    issued_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_access_tokens_agent_id_expires_at", "agent_id", "expires_at"),
        Index("ix_access_tokens_expires_at", "expires_at"),
    )


class UsedJtiRow(Base):
    """Single-use ``jti``s (client assertions, DPoP proofs) until they expire; shared by every
    worker and node, and surviving restarts."""

    __tablename__ = "used_jtis"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<namespace>:<iss>:<jti>"
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
