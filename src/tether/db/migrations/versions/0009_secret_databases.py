"""secret_db_connections, secret_db_roles; leases of database logins

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 18:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_db_connections",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("dsn_secret", sa.String(length=128), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_secret_db_connections")),
    )
    op.create_table(
        "secret_db_roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("connection", sa.String(length=64), nullable=False),
        sa.Column("creation", sa.Text(), nullable=False),
        sa.Column("revocation", sa.Text(), nullable=True),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_secret_db_roles")),
    )
    with op.batch_alter_table("secret_leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("login", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("dropped_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("secret_leases", schema=None) as batch_op:
        batch_op.drop_column("dropped_at")
        batch_op.drop_column("login")
    op.drop_table("secret_db_roles")
    op.drop_table("secret_db_connections")
