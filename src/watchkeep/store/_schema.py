"""The database schema (SQLAlchemy Core), portable between SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "cameras",
    "certificates",
    "enrollments",
    "management_servers",
    "metadata",
    "servers",
    "settings",
    "site_metadata",
    "users",
]

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


# The management server's site database: a separate MetaData so that a CA home and a
# management server can live in different databases (or in one, by URL).
site_metadata = sa.MetaData()

servers = sa.Table(
    "servers",
    site_metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("ports", sa.JSON, nullable=False),
    sa.Column("encryption", sa.Boolean, nullable=False, default=False),
    sa.Column("encrypted_now", sa.Boolean, nullable=False, default=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
    sa.Column("readiness", sa.JSON, nullable=True),
    sa.Column("covering", sa.String(100), nullable=True),
    sa.Column("extra", sa.JSON, nullable=False, default=dict),
)

cameras = sa.Table(
    "cameras",
    site_metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("recording_server", sa.String(100), nullable=False),
    sa.Column("current_server", sa.String(100), nullable=True),
    sa.Column("source", sa.JSON, nullable=False),
)

users = sa.Table(
    "users",
    site_metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),  # administrator | operator
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("cameras", sa.JSON, nullable=True),  # None: every camera
)

settings = sa.Table(
    "settings",
    site_metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
)

# Enrollment tokens the management server issued: what each binds, a hash of its secret
# (never the secret), and whether it is pending, used (the server joined) or withdrawn.
enrollments = sa.Table(
    "enrollments",
    site_metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, index=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("ips", sa.JSON, nullable=False),
    # the public half of the Ed25519 key the token's secret makes (hex): it finds the token
    # and checks a join's proof (watchkeep.pki._enrollment.join_key); the secret is not kept
    sa.Column("join_key", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | used | withdrawn
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("serial", sa.String(64), nullable=True),  # the certificate signed at the join
)

# The management servers of the site (one, or more on one PostgreSQL database): each keeps
# its row fresh while it runs, so that every one of them knows the others (the site map a
# recording server is given, the audience of a log-in token).
management_servers = sa.Table(
    "management_servers",
    site_metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("ports", sa.JSON, nullable=False),
    sa.Column("encryption", sa.Boolean, nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
)
