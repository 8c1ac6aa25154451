"""rollbacks, and each tool call's undo state and delegation chain

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollbacks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("requested_by", sa.String(length=80), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=True),
        sa.Column("until", sa.BigInteger(), nullable=True),
        sa.Column("delegates", sa.Boolean(), nullable=False),
        sa.Column("on_failure", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollbacks")),
    )
    op.create_index("ix_rollbacks_agent_id_status", "rollbacks", ["agent_id", "status"],
                    unique=False)  # fmt: skip
    with op.batch_alter_table("tool_calls") as batch:
        batch.add_column(sa.Column("chain", sa.Text(), nullable=True))
        batch.add_column(sa.Column("undo_state", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("undo_rollback", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("undo_event", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("undo_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tool_calls") as batch:
        for column in ("undo_at", "undo_event", "undo_rollback", "undo_state", "chain"):
            batch.drop_column(column)
    op.drop_index("ix_rollbacks_agent_id_status", table_name="rollbacks")
    op.drop_table("rollbacks")
