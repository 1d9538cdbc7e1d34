"""The site certificate authority: role profiles, issuance, CSR signing, renewal,
revocation, CRLs and key files."""

from watchkeep.pki._authority import (
    CLOCK_SKEW,
    CertificateAuthority,
    LeafRequest,
    PublishedLocations,
    fingerprint,
    parse_publish_url,
    san_dns_names,
    san_ip_addresses,
)
from watchkeep.pki._keys import check_key_file_access, load_private_key, same_public_key
from watchkeep.pki._profiles import KeyType, Profile, Role, generate_key, profile_for
from watchkeep.pki._service import (
    DEFAULT_SERVER_DAYS,
    REVOCATION_REASONS,
    SitePKI,
    certificate_name,
    load_certificate,
    record_to_json,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_SERVER_DAYS",
    "REVOCATION_REASONS",
    "CertificateAuthority",
    "KeyType",
    "LeafRequest",
    "Profile",
    "PublishedLocations",
    "Role",
    "SitePKI",
    "certificate_name",
    "check_key_file_access",
    "fingerprint",
    "generate_key",
    "load_certificate",
    "load_private_key",
    "parse_publish_url",
    "profile_for",
    "record_to_json",
    "same_public_key",
    "san_dns_names",
    "san_ip_addresses",
]
