"""Database schema and access (SQLAlchemy Core; SQLite by default, PostgreSQL by URL)."""

from watchkeep.store._engine import open_database
from watchkeep.store._enrollments import Enrollment, EnrollmentStore
from watchkeep.store._inventory import CertificateRecord, Inventory
from watchkeep.store._schema import cameras, metadata, servers, settings, site_metadata, users
from watchkeep.store._site import SiteStore, User

__all__ = [
    "CertificateRecord",
    "Enrollment",
    "EnrollmentStore",
    "Inventory",
    "SiteStore",
    "User",
    "cameras",
    "metadata",
    "open_database",
    "servers",
    "settings",
    "site_metadata",
    "users",
]
