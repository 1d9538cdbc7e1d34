"""Trust stores: the directory store every watchkeep party verifies with, and the OS store."""

from watchkeep.trust._hash import subject_hash
from watchkeep.trust._store import (
    DirectoryTrustStore,
    SystemTrustStore,
    TrustedCertificate,
    read_pem_bundle,
)

__all__ = [
    "DirectoryTrustStore",
    "SystemTrustStore",
    "TrustedCertificate",
    "read_pem_bundle",
    "subject_hash",
]
