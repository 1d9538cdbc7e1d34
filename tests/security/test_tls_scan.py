"""Independent judges of every TLS endpoint of a running site: sslyze and pkilint.

Given a running encrypted site (management API, recording data and control, mobile HTTPS),
when sslyze (in its own virtual environment: it shares no code with watchkeep) scans each
endpoint with the site CA as its custom CA, then each complies with Mozilla's
"intermediate" configuration, and with `tls_policy = "modern"` with "modern"; none speaks
TLS 1.0/1.1, offers a weak suite, compresses, accepts client-initiated renegotiation, or
ignores TLS_FALLBACK_SCSV. The control listener requires a client certificate and the
management API asks for one: sslyze presents the certificate of the peer that dials each
(the management server's on the control link, a recording server's on the API).
And the certificates the servers serve pass pkilint with only the expected private-PKI
findings, each commented below.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from security_support import (
    HANDSHAKE_TIMEOUT_OPTION,
    Figures,
    add_camera,
    connect,
    encrypt,
    set_server_options,
)

from tool_support import pkilint
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

REPO = Path(__file__).resolve().parents[2]
SSLYZE_PYTHON = REPO / ".venv-sslyze" / "bin" / "python"
SCANNER = Path(__file__).with_name("sslyze_scan.py")

ENDPOINTS = ["ms/api", "rs1/data", "rs1/control", "mobile1/https"]
# sslyze names P-256 secp256r1, Mozilla prime256v1: the same curve.
MOZILLA_GROUPS = {"X25519", "prime256v1", "secp256r1", "secp384r1"}
AEAD_ECDHE_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

# What the CA/Browser Forum server-certificate rules say about a leaf of our private CA.
# Each finding is expected because the CA is private, not a defect: anything else fails
# (tests/pki/test_pki_oracles.py proves that this kind of allow-list still catches the rest).
CABF_PRIVATE_PKI_FINDINGS = {
    # Site host names (*.site.test) are not in public DNS: a private CA exists to name them.
    "cabf.internal_domain_name",
    # IP SANs name the servers' loopback addresses (cert.hostname: IP where addressed by IP).
    "cabf.internal_ip_address",
    # A private CA asserts no CA/B Forum policy OID (it is not audited against them).
    "cabf.serverauth.subscriber.certificate_policies_extension_absent",
    # The specification wants the host name as subject CN as well as in the SAN.
    "cabf.serverauth.dv.common_name_attribute_present",
    # RFC 5280 says SHOULD; without it lint_pkix_cert warns (certificate_skid_end_entity_missing).
    "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
    # Nothing about revocation information: the site's CA publishes its CRL and certificate
    # at the management server, and every leaf names both (CRL DP, AIA caIssuers).
}


def endpoint_of(site: LocalSite, label: str, spec: str) -> dict[str, Any]:
    name, listener = spec.split("/")
    server = site.servers[name]
    endpoint: dict[str, Any] = {
        "name": f"{label}:{spec}",
        "host": server.host,
        "address": server.address,
        "port": server.ports[listener],
        "ca_file": str(site.home.ca_cert),
    }
    # Listeners that ask for a client certificate get one, as their peers present it: the
    # control link requires the management server's; the management API asks recording
    # servers for theirs (optional: clients without one are served, and sslyze's
    # renegotiation probe gives up when asked). The leaf alone: sslyze's legacy OpenSSL,
    # which probes SSL 2.0, cannot load a chain file (the listener has the site CA anyway).
    peer = {"control": site.management, "api": site.servers["rs1"]}.get(listener)
    if peer is not None:
        endpoint["client_cert"] = str(peer.tls_dir / f"{peer.role.value}-{peer.host}.pem")
        endpoint["client_key"] = str(peer.key)
    return endpoint


def sslyze(endpoints: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if not SSLYZE_PYTHON.exists():
        pytest.fail(f"{SSLYZE_PYTHON} is missing: run bash scripts/setup.sh")
    job = {"endpoints": endpoints, "configurations": ["intermediate", "modern"]}
    ran = subprocess.run(
        [str(SSLYZE_PYTHON), str(SCANNER)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return {found["name"]: found for found in json.loads(ran.stdout)}


@pytest.fixture(scope="module")
def modern_site(site_factory: Callable[[str], LocalSite]) -> LocalSite:
    """The same site with `tls_policy = "modern"` on every server (ECDSA certificates)."""
    site = site_factory("modern")
    servers = [
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        ("mobile1", ServerRole.MOBILE),
    ]
    for name, role in servers:
        server = site.add_server(name, role)
        set_server_options(server, tls_policy="modern", **HANDSHAKE_TIMEOUT_OPTION)
    site.start_all()
    add_camera(site, "cam1", "rs1")
    encrypt(site, "rs1", "mobile1", "ms")
    return site


@pytest.fixture(scope="module")
def scans(
    security_site: LocalSite, modern_site: LocalSite, figures: Figures, site_database: str
) -> dict[str, dict[str, Any]]:
    """One sslyze run over every endpoint of both sites (scanned concurrently)."""
    endpoints = [endpoint_of(security_site, "intermediate", spec) for spec in ENDPOINTS]
    endpoints += [endpoint_of(modern_site, "modern", spec) for spec in ENDPOINTS]
    found = sslyze(endpoints)
    figures.endpoints_scanned += [f"{e['name']} (site in {site_database})" for e in endpoints]
    return found


def completed(scans: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    found = scans[name]
    assert found["status"] == "COMPLETED", found
    assert found["errored_commands"] == {}, found
    return found


@pytest.mark.parametrize("spec", ENDPOINTS)
def test_every_endpoint_complies_with_mozilla_intermediate(
    scans: dict[str, dict[str, Any]], spec: str
) -> None:
    found = completed(scans, f"intermediate:{spec}")
    assert found["compliance"]["intermediate"] == {}, found
    assert found["chain_verified"], found  # against the site CA, as a custom CA
    assert found["chain_in_order"], found


@pytest.mark.parametrize("spec", ENDPOINTS)
def test_the_modern_setting_complies_with_mozilla_modern(
    scans: dict[str, dict[str, Any]], spec: str
) -> None:
    found = completed(scans, f"modern:{spec}")
    assert found["compliance"]["modern"] == {}, found
    assert found["versions"] == ["TLSv1.3"], found
    assert found["chain_verified"], found


@pytest.mark.parametrize("spec", ENDPOINTS)
def test_an_intermediate_endpoint_is_not_judged_modern(
    scans: dict[str, dict[str, Any]], spec: str
) -> None:
    # The checker can fail: TLS 1.2 is fine for intermediate and not for modern.
    found = completed(scans, f"intermediate:{spec}")
    assert "tls_versions" in found["compliance"]["modern"], found


@pytest.mark.parametrize("label", ["intermediate", "modern"])
@pytest.mark.parametrize("spec", ENDPOINTS)
def test_no_old_protocol_weak_suite_compression_or_renegotiation(
    scans: dict[str, dict[str, Any]], label: str, spec: str
) -> None:
    found = completed(scans, f"{label}:{spec}")
    assert set(found["versions"]) <= {"TLSv1.2", "TLSv1.3"}, found["versions"]
    assert "TLSv1.3" in found["versions"]
    assert set(found["cipher_suites"].get("TLSv1.2", [])) <= AEAD_ECDHE_TLS12, found
    assert set(found["cipher_suites"]["TLSv1.3"]) <= TLS13_SUITES, found
    assert set(found["curves"]) <= MOZILLA_GROUPS, found["curves"]
    assert found["compression"] is False
    assert found["client_renegotiation"] is False
    assert found["client_renegotiations_accepted"] == 0
    assert found["heartbleed"] is False
    assert found["ccs_injection"] is False
    assert found["fallback_scsv"] is True, found


# -- pkilint on the certificates the servers serve ----------------------------------------


def served_certificate(site: LocalSite, spec: str) -> bytes:
    name, listener = spec.split("/")
    server = site.servers[name]
    ms = site.management
    client_cert = (ms.chain, ms.key) if listener == "control" else None
    with connect(server, listener, ca=site.home.ca_cert, client_cert=client_cert) as sock:
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.parametrize("spec", ENDPOINTS)
def test_the_served_certificates_pass_pkilint(
    security_site: LocalSite, tmp_path: Path, spec: str
) -> None:
    cert = tmp_path / "served.pem"
    cert.write_text(ssl.DER_cert_to_PEM_cert(served_certificate(security_site, spec)))

    pkix = pkilint("lint_pkix_cert", cert)
    assert (pkix.status, pkix.codes) == (0, ()), pkix.report
    cabf = pkilint("lint_cabf_serverauth_cert", cert, "-d")
    assert cabf.status == len(cabf.codes), cabf.report  # the exit status counts the findings
    assert sorted(set(cabf.codes) - CABF_PRIVATE_PKI_FINDINGS) == [], cabf.report


def test_the_site_ca_passes_pkilint(security_site: LocalSite) -> None:
    lint = pkilint("lint_pkix_cert", security_site.home.ca_cert)
    assert (lint.status, lint.codes) == (0, ()), lint.report
