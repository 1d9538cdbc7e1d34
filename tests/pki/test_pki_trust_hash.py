"""`watchkeep.trust.subject_hash` is OpenSSL's subject-name hash.

Trust-store entries are found by `openssl verify -CApath` and `curl --capath` through that
hash alone, so ours must equal `openssl x509 -hash` for every subject, whatever its case
and whitespace.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pki_support import cn, pem, run_cli, self_signed

from watchkeep._home import Home
from watchkeep.pki import load_certificate
from watchkeep.trust import subject_hash


def openssl_hash(cert: x509.Certificate) -> str:
    return (
        subprocess.run(
            ["openssl", "x509", "-hash", "-noout"],
            input=pem(cert),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def test_subject_hash_of_the_site_ca(site: Home, rsa_site: Home) -> None:
    for home in (site, rsa_site):
        ca = load_certificate(home.ca_cert)
        assert subject_hash(ca.subject) == openssl_hash(ca)


def test_trust_install_names_its_link_by_the_openssl_hash(site: Home, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_cli(site.root, "trust", "install", "--store", store).code == 0
    expected = openssl_hash(load_certificate(site.ca_cert))
    assert (store / f"{expected}.0").resolve().read_bytes() == site.ca_cert.read_bytes()


# Case, ASCII whitespace (which OpenSSL trims and collapses), other whitespace that it keeps
# as it is, and non-ASCII letters (which it does not fold).
ODD_TEXT = st.text(
    st.sampled_from([*"aAbBzZ09 -.'", "\t", "\n", "\r", "\v", "\f"])
    | st.sampled_from(["\u00a0", "\u2003", "\x1c", "\x85", "\u3000", "é", "É", "ß", "İ", "Ω"]),
    min_size=1,
    max_size=40,
)
ATTRIBUTES = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
]
attributes = st.builds(x509.NameAttribute, st.sampled_from(ATTRIBUTES), ODD_TEXT)
names = st.lists(
    st.lists(attributes, min_size=1, max_size=2, unique_by=lambda a: a.oid).map(
        x509.RelativeDistinguishedName
    ),
    min_size=1,
    max_size=4,
).map(x509.Name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names)
@example(cn("  Example   SITE\tCA  "))
@example(cn("caf\u00e9 \u00a0 CA"))
@example(cn("\x1cSite CA\x1f"))
@example(
    x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Mixed  Case\nCA"),
        ]
    )
)
def test_subject_hash_matches_openssl(name: x509.Name) -> None:
    assert subject_hash(name) == openssl_hash(self_signed(name))
