"""freezes: the incident switch, with its history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "freezes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=True),
        sa.Column("role", sa.String(length=100), nullable=True),
        sa.Column("risk_tier", sa.String(length=16), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("lifted_by", sa.String(length=80), nullable=True),
        sa.Column("lifted_at", sa.BigInteger(), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_freezes")),
    )
    op.create_index("ix_freezes_lifted_at", "freezes", ["lifted_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_freezes_lifted_at", table_name="freezes")
    op.drop_table("freezes")
