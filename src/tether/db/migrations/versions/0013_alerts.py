"""alerts raised from the ledger, their webhook deliveries (an outbox), the projector's state

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=True),
        sa.Column("summary", sa.String(length=500), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("suppressed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.BigInteger(), nullable=False),
        sa.Column("acked_by", sa.String(length=80), nullable=True),
        sa.Column("acked_by_name", sa.String(length=64), nullable=True),
        sa.Column("acked_at", sa.BigInteger(), nullable=True),
        sa.Column("ack_note", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("seq", name=op.f("uq_alerts_seq")),
    )
    op.create_index("ix_alerts_dedup_key_last_at", "alerts", ["dedup_key", "last_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("alert_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.BigInteger(), nullable=False),
        sa.Column("next_at", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_deliveries")),
    )
    op.create_index("ix_alert_deliveries_endpoint_status_seq", "alert_deliveries",
                    ["endpoint", "status", "seq"])  # fmt: skip
    op.create_table(
        "alert_state",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_alert_state")),
    )
    # Alerts start from now: a deployment's history before this release raises none.
    op.execute("INSERT INTO alert_state (name, value) "
               "SELECT 'cursor', COALESCE(MAX(seq), 0) FROM audit_events")  # fmt: skip


def downgrade() -> None:
    op.drop_table("alert_state")
    op.drop_index("ix_alert_deliveries_endpoint_status_seq", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alerts_dedup_key_last_at", table_name="alerts")
    op.drop_table("alerts")
