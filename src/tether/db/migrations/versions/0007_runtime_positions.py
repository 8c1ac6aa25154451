"""runtime_positions: each running worker's place in the change feed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runtime_positions",
        sa.Column("runtime_id", sa.String(length=40), nullable=False),
        sa.Column("applied_seq", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("runtime_id", name=op.f("pk_runtime_positions")),
    )


def downgrade() -> None:
    op.drop_table("runtime_positions")
