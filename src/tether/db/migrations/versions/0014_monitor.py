"""monitoring: each worker's syncs (counts, first-seen pairs) and session touches exchanged
between workers; each agent's risk state

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "monitor_syncs",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("worker", sa.String(length=40), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_syncs")),
    )
    op.create_index("ix_monitor_syncs_at", "monitor_syncs", ["at"])
    op.create_table(
        "monitor_touches",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("worker", sa.String(length=40), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_touches")),
    )
    op.create_index("ix_monitor_touches_at", "monitor_touches", ["at"])
    op.create_table(
        "agent_risk",
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("level", sa.String(length=32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=True),
        sa.Column("step_up", sa.Boolean(), nullable=False),
        sa.Column("raised_at", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("cleared_at", sa.BigInteger(), nullable=True),
        sa.Column("cleared_by", sa.String(length=80), nullable=True),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agent_risk")),
    )


def downgrade() -> None:
    op.drop_table("agent_risk")
    op.drop_index("ix_monitor_touches_at", table_name="monitor_touches")
    op.drop_table("monitor_touches")
    op.drop_index("ix_monitor_syncs_at", table_name="monitor_syncs")
    op.drop_table("monitor_syncs")
