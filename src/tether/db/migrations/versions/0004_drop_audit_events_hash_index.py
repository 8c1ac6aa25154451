"""drop the ledger's hash index

The index on ``audit_events.hash`` served one query: during verification, after a chain
link is already found broken, which event holds a given hash (to tell a reordered event
from an edited one). Its random keys cost every append more than all other indexes
together (bench/README.md); that one lookup now scans.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 21:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_hash")


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_hash", ["hash"], unique=False)
