"""compliance reports and right-sizing proposals (tether.governance)

governance_reports: each built compliance report's ledger range, so that retention keeps it
(tether.governance.report_models).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "governance_reports",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("built_at", sa.BigInteger(), nullable=False),
        sa.Column("built_by", sa.String(length=80), nullable=False),
        sa.Column("period_from", sa.BigInteger(), nullable=False),
        sa.Column("period_to", sa.BigInteger(), nullable=False),
        sa.Column("seq_from", sa.BigInteger(), nullable=False),
        sa.Column("seq_to", sa.BigInteger(), nullable=False),
        sa.Column("built_seq", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_governance_reports")),
    )
    op.create_index("ix_governance_reports_seq_from", "governance_reports", ["seq_from"])


def downgrade() -> None:
    op.drop_index("ix_governance_reports_seq_from", table_name="governance_reports")
    op.drop_table("governance_reports")
