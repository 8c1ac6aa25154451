"""tool_calls: one row per recorded tool call (gateway or SDK guard), keyed by its decision,
with its compensation (the journal)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tool_calls",
        sa.Column("decision_event", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("tool", sa.String(length=200), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("reversible", sa.Boolean(), nullable=True),
        sa.Column("undo", sa.Text(), nullable=True),
        sa.Column("undo_error", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("decision_event", name=op.f("pk_tool_calls")),
        sa.UniqueConstraint("event_id", name=op.f("uq_tool_calls_event_id")),
    )
    op.create_index("ix_tool_calls_agent_id_at", "tool_calls", ["agent_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tool_calls_agent_id_at", table_name="tool_calls")
    op.drop_table("tool_calls")
