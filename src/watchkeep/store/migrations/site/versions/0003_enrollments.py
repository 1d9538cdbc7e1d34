"""Enrollment tokens: a server joins the site with a one-time token (``watchkeep join``).

Revision ID: 0003_enrollments
Revises: 0002_management_servers
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_enrollments"
down_revision = "0002_management_servers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("ips", sa.JSON, nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("serial", sa.String(64), nullable=True),
    )
    op.create_index("ix_enrollments_name", "enrollments", ["name"])


def downgrade() -> None:
    op.drop_index("ix_enrollments_name", table_name="enrollments")
    op.drop_table("enrollments")
