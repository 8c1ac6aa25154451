"""secrets: master keys, secrets, their encrypted versions, leases

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_master_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("retired_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_master_keys")),
    )
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("broker_only", sa.Boolean(), nullable=False),
        sa.Column("lease_seconds", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_secrets")),
    )
    op.create_table(
        "secret_versions",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("data_key", sa.Text(), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_secret_versions")),
    )
    op.create_index("ix_secret_versions_key_id", "secret_versions", ["key_id"], unique=False)
    op.create_table(
        "secret_leases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("renewed_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_by", sa.String(length=80), nullable=True),
        sa.Column("revoked_why", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_leases")),
    )
    op.create_index(
        "ix_secret_leases_agent_id_expires_at", "secret_leases", ["agent_id", "expires_at"],
        unique=False,
    )  # fmt: skip
    op.create_index("ix_secret_leases_name", "secret_leases", ["name"], unique=False)
    op.create_index("ix_secret_leases_revoked_at", "secret_leases", ["revoked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_secret_leases_revoked_at", table_name="secret_leases")
    op.drop_index("ix_secret_leases_name", table_name="secret_leases")
    op.drop_index("ix_secret_leases_agent_id_expires_at", table_name="secret_leases")
    op.drop_table("secret_leases")
    op.drop_index("ix_secret_versions_key_id", table_name="secret_versions")
    op.drop_table("secret_versions")
    op.drop_table("secrets")
    op.drop_table("secret_master_keys")
