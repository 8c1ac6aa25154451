"""The change feed's table: one row per changed thing, in commit order."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base

# SQLite autoincrements only an INTEGER PRIMARY KEY.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


class ChangeRow(Base):
    __tablename__ = "runtime_changes"

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(128))
    time: Mapped[int] = mapped_column(BigInteger)  # microseconds since the epoch


class RuntimePositionRow(Base):
    """Where each running worker is in the change feed (``tether.runtime.positions``): a
    write that changed runtime state returns once every live worker has applied it."""

    __tablename__ = "runtime_positions"

    runtime_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    applied_seq: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[int] = mapped_column(BigInteger)  # microseconds, the worker's clock
