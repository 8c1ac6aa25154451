"""agents: how far the recertification sweep got for the current recertify_by

The sweep (tether.agents.recertify_sweep) gives notice before an agent's ``recertify_by``
and responds once it is overdue, each once per due date; ``recertify_stage`` records which
it did, and the index lets it read only the agents with something left to do.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recertify_stage", sa.String(length=16), nullable=True))
        batch_op.create_index(
            "ix_agents_recertify_stage_by", ["recertify_stage", "recertify_by"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index("ix_agents_recertify_stage_by")
        batch_op.drop_column("recertify_stage")
