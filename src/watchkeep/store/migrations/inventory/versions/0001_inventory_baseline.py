"""The certificate inventory as watchkeep 0.1.0 made it.

Revision ID: 0001_inventory_baseline
Revises:
Create Date: 2026-12-02

A database made before migrations existed has exactly this table and no version table: it
is stamped with this revision, not re-created (watchkeep.store._migrations)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_inventory_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("hosts", sa.JSON, nullable=False),
        sa.Column("ips", sa.JSON, nullable=False),
        sa.Column("key_type", sa.String(20), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha256_fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("issuer_fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_by", sa.String(64), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(40), nullable=True),
        sa.Column("cert_path", sa.Text, nullable=False),
        sa.Column("chain_path", sa.Text, nullable=False),
        sa.Column("key_path", sa.Text, nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
    )
    op.create_index("ix_certificates_name", "certificates", ["name"])


def downgrade() -> None:
    op.drop_table("certificates")
