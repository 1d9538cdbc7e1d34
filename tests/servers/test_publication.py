"""What the management server publishes over plain HTTP (the CA certificates and their CRLs,
at the URLs its certificates name), judged by clients that are not watchkeep: openssl
downloads the CRL a certificate points to (`verify -crl_download`) and curl fetches both
documents.

Given a site whose CA publishes at its management server's `[ports] publish` listener.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from watchkeep._clock import utcnow
from watchkeep._home import Home
from watchkeep.pki import KeyType, Role, SitePKI, fingerprint, load_certificate
from watchkeep.servers._expiry import ExpiryWatch, inventory_certificates
from watchkeep.servers._publish import Publication
from watchkeep.site import ServerRole
from watchkeep.store import CertificateRecord
from watchkeep.testing import LocalSite

PUBLISH_PORT = 9080


@pytest.fixture(scope="module")
def publishing_site(site_factory: Callable[..., LocalSite]) -> LocalSite:
    site = site_factory("publishing")
    # Issued before the CA had a publish URL: it must name none.
    site.pki.issue(Role.EVENT, ["before.site.test"])
    ms_address = f"{site.network}.2"  # the first server added is .2
    site.pki.set_publish_url(f"http://{ms_address}:{PUBLISH_PORT}")
    ms = site.add_server("ms", ServerRole.MANAGEMENT, ports={"api": 9000, "publish": PUBLISH_PORT})
    assert ms.address == ms_address
    site.start("ms")
    site.wait_listening(ms)
    return site


def locations(cert_path: str) -> tuple[list[str], list[str]]:
    """(CRL distribution point URLs, AIA caIssuers URLs) of a certificate."""
    cert = load_certificate(Path(cert_path))
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crls = [str(n.value) for p in cdp for n in p.full_name or ()]
    except x509.ExtensionNotFound:
        crls = []
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        cas = [
            str(d.access_location.value)
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        ]
    except x509.ExtensionNotFound:
        cas = []
    return crls, cas


def curl(url: str, out: Path, *options: str) -> tuple[int, str]:
    """(HTTP status, content type) of one curl request; the body in ``out``."""
    ran = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-o", str(out), "-w", "%{http_code} %{content_type}",
         *options, url],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    status, _, content_type = ran.stdout.partition(" ")
    return int(status), content_type


def openssl_verify_downloading_crls(ca: Path, cert: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), "-crl_check", "-crl_download", cert],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def issue(site: LocalSite, host: str, days: int = 90) -> CertificateRecord:
    return site.pki.issue(Role.EVENT, [host], days=days)


def test_a_certificate_issued_after_the_publish_url_names_its_crl_and_ca(
    publishing_site: LocalSite,
) -> None:
    record = issue(publishing_site, "named.site.test")
    name = fingerprint(publishing_site.pki.ca_certificate())[:16]
    base = f"http://{publishing_site.management.address}:{PUBLISH_PORT}"
    assert locations(record.cert_path) == ([f"{base}/crl/{name}.crl"], [f"{base}/ca/{name}.crt"])


def test_a_certificate_issued_before_the_publish_url_names_no_place(
    publishing_site: LocalSite,
) -> None:
    before = publishing_site.pki.find("event-before.site.test")
    assert locations(before.cert_path) == ([], [])


def test_curl_fetches_the_ca_certificate_and_its_crl_as_der(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    ca = publishing_site.pki.ca_certificate()
    record = issue(publishing_site, "curl.site.test")
    (crl_url,), (ca_url,) = locations(record.cert_path)

    status, content_type = curl(ca_url, tmp_path / "ca.crt")
    assert (status, content_type) == (200, "application/pkix-cert")
    assert x509.load_der_x509_certificate((tmp_path / "ca.crt").read_bytes()) == ca

    status, content_type = curl(crl_url, tmp_path / "ca.crl")
    assert (status, content_type) == (200, "application/pkix-crl")
    crl = x509.load_der_x509_crl((tmp_path / "ca.crl").read_bytes())
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_the_publish_listener_answers_get_only_and_only_what_it_publishes(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    record = issue(publishing_site, "methods.site.test")
    (crl_url,), _ = locations(record.cert_path)
    assert curl(crl_url, tmp_path / "post", "-X", "POST")[0] == 405
    assert curl(crl_url, tmp_path / "put", "-X", "PUT", "--data", "x")[0] == 405
    elsewhere = crl_url.rsplit("/", 1)[0] + "/0000000000000000.crl"
    assert curl(elsewhere, tmp_path / "missing")[0] == 404
    # Plaintext, always: a TLS client gets no handshake.
    ran = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-k", crl_url.replace("http://", "https://")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert ran.returncode == 35, (ran.returncode, ran.stderr)


def test_openssl_downloads_the_crl_and_refuses_a_revoked_certificate(
    publishing_site: LocalSite,
) -> None:
    kept = issue(publishing_site, "kept.site.test")
    revoked = issue(publishing_site, "revoked.site.test")
    ca = publishing_site.home.ca_cert

    # Given both verify with the published CRL
    for record in (kept, revoked):
        verdict = openssl_verify_downloading_crls(ca, record.cert_path)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    # When one is revoked
    publishing_site.pki.revoke(revoked.serial, reason="key-compromise")

    # Then the CRL openssl downloads refuses it, and only it
    verdict = openssl_verify_downloading_crls(ca, revoked.cert_path)
    assert verdict.returncode != 0
    assert "error 23" in verdict.stdout + verdict.stderr, verdict.stdout + verdict.stderr
    verdict = openssl_verify_downloading_crls(ca, kept.cert_path)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


# -- nothing issued is forgotten (cert.expiry_warning over the CA's inventory) -------------


def test_a_five_day_certificate_for_a_machine_watchkeep_does_not_run_is_watched(
    publishing_site: LocalSite,
) -> None:
    # Given a certificate exported for an event server: no watchkeep server serves it
    record = issue(publishing_site, "events.site.test", days=5)

    # Then the doctor on the CA's home warns about it
    ran = publishing_site.cli("doctor", "--json")
    findings = json.loads(ran.stdout)
    ours = [f for f in findings if f["server"] == record.name]
    assert [f["code"] for f in ours] == ["cert.expiry_warning"], ran.stdout + ran.stderr
    assert ours[0]["severity"] == "warning"
    assert record.serial in ours[0]["message"]
    assert f"cert renew {record.name}" in ours[0]["fix"]

    # And the management server that holds the CA lists it in /metrics
    ms = publishing_site.management
    metrics = urllib.request.urlopen(f"http://{ms.address}:{ms.ports['api']}/metrics", timeout=20)
    text = metrics.read().decode()
    line = next(
        (x for x in text.splitlines() if x.startswith("watchkeep_certificate_days_left{")
         and f'serial="{record.serial}"' in x),
        None,
    )  # fmt: skip
    assert line is not None, text
    assert f'server="{record.name}"' in line
    assert 'kind="issued"' in line
    assert 'role="event"' in line
    assert 4.5 < float(line.rsplit(" ", 1)[1]) <= 5.0

    # And its expiry watch logs each threshold it is under once, as for its own certificate
    watch = ExpiryWatch((30, 14, 7))
    watched = inventory_certificates(publishing_site.home.root)
    logged = [x for x in watch.check(watched, utcnow()) if record.serial in x]
    assert [x.split(" days); ")[0].rsplit("(", 1)[1] for x in logged] == [
        "under 30",
        "under 14",
        "under 7",
    ]
    assert all(x.startswith("[cert.expiry_warning]") for x in logged)
    assert all(f"cert renew {record.name}" in x for x in logged)
    assert not [x for x in watch.check(watched, utcnow()) if record.serial in x]


# -- trusting the CA by its fingerprint (trust install --from, site connect --fingerprint) --


def watchkeep(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchkeep", "--home", str(home), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_a_ca_whose_fingerprint_differs_is_refused_and_nothing_is_written(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    ms = publishing_site.management
    real = fingerprint(publishing_site.pki.ca_certificate())
    forged = real[::-1]
    store = tmp_path / "trust"
    ran = watchkeep(
        tmp_path / "home", "trust", "install", "--from", f"http://{ms.address}:9000",
        "--fingerprint", forged, "--store", str(store),
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert real in lines[0]
    assert forged in lines[0]
    assert "fix:" in lines[0]
    assert not store.exists() or not any(store.iterdir())


def test_trust_install_from_the_encrypted_management_api_takes_the_ca_with_that_fingerprint(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    # Given the management API speaks TLS, with a certificate this machine cannot verify yet
    publishing_site.connect_cli()
    publishing_site.encrypt("ms")
    ms = publishing_site.management
    ca = publishing_site.pki.ca_certificate()
    colons = ":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint(ca)))

    # When the CA is fetched by its fingerprint (as `ca show` prints it, or with colons)
    store = tmp_path / "trust"
    ran = watchkeep(
        tmp_path / "home", "trust", "install", "--from", f"https://{ms.address}:9000",
        "--fingerprint", colons, "--store", str(store), "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr

    # Then the store trusts that CA, and curl verifies the management server with it alone
    listed = watchkeep(tmp_path / "home", "trust", "list", "--store", str(store), "--json")
    assert [e["sha256_fingerprint"] for e in json.loads(listed.stdout)] == [fingerprint(ca)]
    answer = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--capath", str(store), "--resolve",
         f"{ms.host}:9000:{ms.address}", f"https://{ms.host}:9000/api/v1/ca"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert x509.load_pem_x509_certificates(answer.stdout.encode()) == [ca]

    # And `site connect --fingerprint` does the same before it logs in
    home = tmp_path / "client"
    ran = watchkeep(
        home, "site", "connect", "--host", ms.host, "--address", ms.address, "--encrypted",
        "--password-file", str(publishing_site.password_file), "--fingerprint", fingerprint(ca),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    status = watchkeep(home, "site", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [s["name"] for s in json.loads(status.stdout)["servers"]] == ["ms"]


def test_site_connect_with_a_wrong_fingerprint_writes_nothing(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    ms = publishing_site.management
    home = tmp_path / "client"
    ran = watchkeep(
        home, "site", "connect", "--host", ms.host, "--address", ms.address, "--encrypted",
        "--password-file", str(publishing_site.password_file), "--fingerprint", "ab" * 32,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "ab" * 32 in ran.stderr
    assert not (home / "trust").exists() or not any((home / "trust").iterdir())
    assert not (home / "site.json").exists()


def test_during_a_rotation_both_cas_and_their_crls_are_published(
    publishing_site: LocalSite, tmp_path: Path
) -> None:
    # Last in this module: the site's CA changes.
    from watchkeep.pki._rotation import rotate_ca

    before = issue(publishing_site, "old-ca.site.test")
    old, new = rotate_ca(publishing_site.pki)
    after = issue(publishing_site, "new-ca.site.test")

    # Each certificate points at the CA that signed it, and both answer
    old_urls, new_urls = locations(before.cert_path), locations(after.cert_path)
    assert old_urls != new_urls
    for (crl_url,), (ca_url,) in (old_urls, new_urls):
        assert curl(ca_url, tmp_path / "ca.crt") == (200, "application/pkix-cert")
        assert curl(crl_url, tmp_path / "ca.crl") == (200, "application/pkix-crl")
    assert {fingerprint(x509.load_der_x509_certificate((tmp_path / "ca.crt").read_bytes()))} == {
        new.fingerprint
    }
    for record in (before, after):
        verdict = openssl_verify_downloading_crls(Path(record.chain_path), record.cert_path)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert old.fingerprint != new.fingerprint


def test_a_crl_near_its_next_update_is_re_signed_before_it_is_published(tmp_path: Path) -> None:
    # Given a CA whose CRL was signed six and a half days ago (it lives seven)
    home = Home(tmp_path / "ca")
    pki = SitePKI(home)
    pki.init_ca("Stale CRL CA", key_type=KeyType.ECDSA_P256)
    now = utcnow()
    pki.write_crl(now=now - dt.timedelta(days=6, hours=12))

    # When the publication is laid out
    documents = Publication(home.root, None).build()

    # Then the CRL it serves is a fresh one, days from its nextUpdate
    name = fingerprint(pki.ca_certificate())[:16]
    body, content_type = documents[f"/crl/{name}.crl"]
    assert content_type == "application/pkix-crl"
    crl = x509.load_der_x509_crl(body)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - now > dt.timedelta(days=6)
