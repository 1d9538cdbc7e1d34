"""Database schema and access (SQLAlchemy Core; SQLite by default, PostgreSQL by URL)."""

from watchkeep.store._engine import create_engine, open_database, shown
from watchkeep.store._enrollments import Enrollment, EnrollmentStore
from watchkeep.store._inventory import CertificateRecord, Inventory
from watchkeep.store._migrations import SCHEMAS, Upgrade, upgrade
from watchkeep.store._schema import cameras, metadata, servers, settings, site_metadata, users
from watchkeep.store._site import SiteStore, User

__all__ = [
    "SCHEMAS",
    "CertificateRecord",
    "Enrollment",
    "EnrollmentStore",
    "Inventory",
    "SiteStore",
    "Upgrade",
    "User",
    "cameras",
    "create_engine",
    "metadata",
    "open_database",
    "servers",
    "settings",
    "shown",
    "site_metadata",
    "upgrade",
    "users",
]
