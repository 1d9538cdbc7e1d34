"""The management servers of the site: several may share one PostgreSQL database.

Revision ID: 0002_management_servers
Revises: 0001_site_baseline
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_management_servers"
down_revision = "0001_site_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "management_servers",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("ports", sa.JSON, nullable=False),
        sa.Column("encryption", sa.Boolean, nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("management_servers")
