"""The site database as watchkeep 0.1.0 made it (servers, cameras, users, settings).

Revision ID: 0001_site_baseline
Revises:
Create Date: 2026-12-02

A database made before migrations existed has exactly these tables and no version table:
it is stamped with this revision, not re-created (watchkeep.store._migrations)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_site_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("ports", sa.JSON, nullable=False),
        sa.Column("encryption", sa.Boolean, nullable=False),
        sa.Column("encrypted_now", sa.Boolean, nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("readiness", sa.JSON, nullable=True),
        sa.Column("covering", sa.String(100), nullable=True),
        sa.Column("extra", sa.JSON, nullable=False),
    )
    op.create_table(
        "cameras",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("recording_server", sa.String(100), nullable=False),
        sa.Column("current_server", sa.String(100), nullable=True),
        sa.Column("source", sa.JSON, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("cameras", sa.JSON, nullable=True),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("settings", "users", "cameras", "servers"):
        op.drop_table(table)
