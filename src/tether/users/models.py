"""Humans and their API tokens (stored as SHA-256 digests, never in clear)."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[int] = mapped_column(BigInteger)
    # The web console's sign-in: an argon2id hash (None: no password, no console sign-in),
    # failed attempts since the last success, and until when sign-in is refused after too many.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[int | None] = mapped_column(BigInteger)
    # Who this human is at the OpenID Connect provider they sign in with ("<iss> <sub>"):
    # set when the provider's first sign-in created them; a local user never gets one.
    external_subject: Mapped[str | None] = mapped_column(String(300), unique=True)


class UserTokenRow(Base):
    __tablename__ = "user_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class UserSessionRow(Base):
    """A signed-in console session: the cookie's secret as a SHA-256 digest, never in clear."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_seen_at: Mapped[int] = mapped_column(BigInteger)  # for the idle timeout
    expires_at: Mapped[int] = mapped_column(BigInteger)  # however active it is
    ended_at: Mapped[int | None] = mapped_column(BigInteger)  # signed out, or cut off
