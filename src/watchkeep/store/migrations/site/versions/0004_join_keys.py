"""Enrollment tokens are kept as the public key their secret makes, not a hash of it: a
join proves the secret with a signature and no longer sends it (watchkeep.pki._enrollment).

A token made before this revision cannot make that proof against what was kept of it: its
row, if still pending, is withdrawn here, and ``watchkeep enroll create`` makes a new one.

Revision ID: 0004_join_keys
Revises: 0003_enrollments
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_join_keys"
down_revision = "0003_enrollments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE enrollments SET status = 'withdrawn' WHERE status = 'pending'"))
    with op.batch_alter_table("enrollments") as batch:
        batch.alter_column("secret_hash", new_column_name="join_key")


def downgrade() -> None:
    op.execute(sa.text("UPDATE enrollments SET status = 'withdrawn' WHERE status = 'pending'"))
    with op.batch_alter_table("enrollments") as batch:
        batch.alter_column("join_key", new_column_name="secret_hash")
