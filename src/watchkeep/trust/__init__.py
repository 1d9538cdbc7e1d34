"""Trust stores: the directory store every watchkeep party verifies with, and the OS store."""

from watchkeep.trust._bootstrap import fetch_ca_by_fingerprint, normalise_fingerprint
from watchkeep.trust._hash import subject_hash
from watchkeep.trust._managed import (
    Refreshed,
    managed_stores,
    refresh_crl_in_stores,
    remember_store,
)
from watchkeep.trust._store import (
    DirectoryTrustStore,
    SystemTrustStore,
    TrustedCertificate,
    read_pem_bundle,
)

__all__ = [
    "DirectoryTrustStore",
    "Refreshed",
    "SystemTrustStore",
    "TrustedCertificate",
    "fetch_ca_by_fingerprint",
    "managed_stores",
    "normalise_fingerprint",
    "read_pem_bundle",
    "refresh_crl_in_stores",
    "remember_store",
    "subject_hash",
]
