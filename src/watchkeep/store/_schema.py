"""The database schema (SQLAlchemy Core), portable between SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["certificates", "metadata"]

metadata = sa.MetaData()

# One row per issued certificate, kept after renewal (superseded) and revocation, so the
# inventory is the CA's complete record: the CRL is made from it.
certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.String(64), primary_key=True),  # lower-case hex
    sa.Column("name", sa.String(300), nullable=False, index=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("hosts", sa.JSON, nullable=False),
    sa.Column("ips", sa.JSON, nullable=False),
    sa.Column("key_type", sa.String(20), nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
    sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sha256_fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("issuer_fingerprint", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # active | superseded | revoked
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("superseded_by", sa.String(64), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revocation_reason", sa.String(40), nullable=True),
    sa.Column("cert_path", sa.Text, nullable=False),
    sa.Column("chain_path", sa.Text, nullable=False),
    sa.Column("key_path", sa.Text, nullable=True),  # None: signed from a CSR, key elsewhere
    sa.Column("owner", sa.String(64), nullable=True),
)
