"""access reviews: campaigns, their lines and answers (tether.governance.reviews)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("policy_version", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("started_seq", sa.BigInteger(), nullable=False),
        sa.Column("closed_by", sa.String(length=80), nullable=True),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.Column("closed_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_status_due_at", "reviews", ["status", "due_at"])
    op.create_index("ix_reviews_closed_at", "reviews", ["closed_at"])
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])
    op.create_table(
        "review_lines",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("review_id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=True),
        sa.Column("last_used_seq", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("answer", sa.String(length=16), nullable=True),
        sa.Column("answer_note", sa.Text(), nullable=True),
        sa.Column("answered_by", sa.String(length=80), nullable=True),
        sa.Column("answered_at", sa.BigInteger(), nullable=True),
        sa.Column("answer_seq", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("applied_by", sa.String(length=80), nullable=True),
        sa.Column("applied_at", sa.BigInteger(), nullable=True),
        sa.Column("applied_seq", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_review_lines_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name=op.f("fk_review_lines_review_id_reviews")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_lines")),
    )
    op.create_index("ix_review_lines_review_id_id", "review_lines", ["review_id", "id"])
    op.create_index("ix_review_lines_agent_id_state", "review_lines", ["agent_id", "state"])
    op.create_index("ix_review_lines_state_review_id", "review_lines", ["state", "review_id"])


def downgrade() -> None:
    op.drop_index("ix_review_lines_state_review_id", table_name="review_lines")
    op.drop_index("ix_review_lines_agent_id_state", table_name="review_lines")
    op.drop_index("ix_review_lines_review_id_id", table_name="review_lines")
    op.drop_table("review_lines")
    op.drop_index("ix_reviews_created_at", table_name="reviews")
    op.drop_index("ix_reviews_closed_at", table_name="reviews")
    op.drop_index("ix_reviews_status_due_at", table_name="reviews")
    op.drop_table("reviews")
