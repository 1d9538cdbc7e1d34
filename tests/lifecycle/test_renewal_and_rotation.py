"""The expiry guard end to end: warnings, metrics, automatic renewal and CA rotation on a
running encrypted site while a client streams live video."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from watchkeep.pki import SitePKI, fingerprint
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite, eventually
from watchkeep.tls import Endpoint, fetch_peer_certificate

pytestmark = pytest.mark.slow


def served_certificate(server: LocalServer, port: str = "data") -> x509.Certificate:
    endpoint = Endpoint(server.name, server.host, server.address, server.ports[port], True)
    cert = asyncio.run(fetch_peer_certificate(endpoint))
    assert cert is not None
    return cert


def encrypted_site_with_camera(make_site: Callable[..., LocalSite]) -> LocalSite:
    site = make_site(
        ("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING), ("mobile1", ServerRole.MOBILE)
    )
    for name in site.servers:
        site.start(name)
    site.connect_cli()
    eventually(
        lambda: (
            site.cli("site", "status").returncode == 0
            and "OFFLINE" not in site.cli("site", "status").stdout
        ),
        what="servers online",
    )
    assert (
        site.cli(
            "camera", "add", "cam1", "--recording-server", "rs1", "--synthetic", "320x180@10"
        ).returncode
        == 0
    )
    for name in ("rs1", "mobile1", "ms"):
        result = site.cli("encryption", "enable", "--server", name)
        assert result.returncode == 0, result.stderr
    eventually(lambda: served_certificate(site.servers["rs1"]), what="rs1 data over TLS")
    return site


def start_viewer(site: LocalSite, out: Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchkeep",
            "--home",
            str(site.home.root),
            "view",
            "cam1",
            "--seconds",
            str(seconds),
            "--json",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_viewer(viewer: subprocess.Popen[str], out: Path) -> dict[str, object]:
    stdout, stderr = viewer.communicate(timeout=120)
    assert viewer.returncode == 0, stderr
    report: dict[str, object] = json.loads(stdout)
    sequences = [int(s) for s in re.findall(rb"X-Sequence: (\d+)", out.read_bytes())]
    gaps = [(a, b) for a, b in itertools.pairwise(sequences) if b != a + 1]
    assert sequences, "the viewer received no frame"
    assert gaps == [], f"frames lost: {gaps[:5]}"
    assert report["reconnects"] == 0
    assert report["encrypted"] is True
    return report


def test_renewal_while_streaming(make_site: Callable[..., LocalSite], tmp_path: Path) -> None:
    # Given an encrypted site and a client streaming live video over TLS
    site = encrypted_site_with_camera(make_site)
    rs1 = site.servers["rs1"]
    viewer = start_viewer(site, tmp_path / "live.mjpeg", 14)
    key_before = rs1.key.read_bytes()
    # When rs1 gets a certificate 65 days into its 90 (past 2/3 of its life, 25 days left)
    site.issue(rs1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=65))
    aged = SitePKI(site.home).find(f"recording-{rs1.host}")
    # Then rs1 renews it itself, over mutual TLS: a new key made in its own directory, a
    # CSR signed by the management server for its names, and serves the new certificate
    renewed = eventually(
        lambda: (r := SitePKI(site.home).find(f"recording-{rs1.host}")).serial != aged.serial and r,
        what="renewal",
    )
    assert renewed.key_path is None  # the CA never saw the key
    assert renewed.hosts == aged.hosts
    assert renewed.ips == aged.ips
    # (each says so once the inventory has it: the management server after writing it,
    # rs1 once the answer reached it)
    for server, said in (
        ("ms", f"renewed recording-{rs1.host}"),
        ("rs1", "rs1: renewed its certificate"),
    ):
        eventually(lambda s=server, w=said: w in site.log_text(s), what=f"{server}: {said}")
    eventually(
        lambda: fingerprint(served_certificate(rs1)) == renewed.sha256_fingerprint,
        what="the new certificate served",
    )
    assert rs1.key.read_bytes() not in (key_before, b"")
    assert rs1.key.stat().st_mode & 0o777 == 0o600
    assert SitePKI(site.home).find(aged.serial).status == "superseded"
    # ... the site status says when it renews next
    status = next(
        s
        for s in json.loads(site.cli("site", "status", "--json").stdout)["servers"]
        if s["name"] == "rs1"
    )
    assert status["renewal"]["serial"] == renewed.serial or status["renewal"]["renewals"] >= 1
    # ... while the client lost no frame and never reconnected
    finish_viewer(viewer, tmp_path / "live.mjpeg")


def test_expiry_warnings_in_logs_status_and_metrics(make_site: Callable[..., LocalSite]) -> None:
    # Given a site whose management server does not renew, and rs1 with 10 days left
    site = make_site(("ms", ServerRole.MANAGEMENT), auto_renew=False)
    rs1 = site.add_server("rs1", ServerRole.RECORDING, certificate=False)
    site.issue(rs1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=80))
    aged = SitePKI(site.home).find(f"recording-{rs1.host}")
    for name in site.servers:
        site.start(name)
    site.connect_cli()
    # Then rs1 logs the 30- and 14-day thresholds, once each, naming the fix
    log = eventually(
        lambda: "under 14 days" in (t := site.log_text("rs1")) and t, what="the warnings"
    )
    assert log.count(f"[cert.expiry_warning] rs1: its certificate (serial {aged.serial}") == 2
    # ... as what rs1's machine can do: rs1 renews itself through the management server;
    # `cert renew` runs where the CA is, and its files then go to rs1's machine
    warning = next(x for x in log.splitlines() if "under 14 days" in x)
    assert f"fix: it renews itself through the management server {site.servers['ms'].host}" in (
        warning
    )
    assert f"watchkeep cert renew recording-{rs1.host}, and install the new files on" in warning
    assert "watchkeep join TOKEN" in warning
    # ... the site status says which threshold it is inside
    status = eventually(
        lambda: next(
            (
                s
                for s in json.loads(site.cli("site", "status", "--json").stdout)["servers"]
                if s["name"] == "rs1" and s["certificate"]
            ),
            None,
        ),
        what="rs1 in the status",
    )
    assert status["certificate"]["expiry_warning"] == 14
    assert 9.5 < status["certificate"]["days_left"] < 10.5
    # ... and that rs1 cannot renew it, as the CA is offline: when it was due, how often it
    # failed, why, in the status, the doctor's findings and the metrics
    renewal = eventually(
        lambda: (
            (
                r := next(
                    s
                    for s in json.loads(site.cli("site", "status", "--json").stdout)["servers"]
                    if s["name"] == "rs1"
                )["renewal"]
            )
            and r["failures"] >= 1
            and r
        ),
        what="rs1 to report a failed renewal",
    )
    assert "CA offline" in renewal["last_error"] or "holds no CA" in renewal["last_error"]
    assert renewal["next_renewal_at"] < renewal["retry_at"]
    table = site.cli("site", "status").stdout
    assert "FAILED" in table
    findings = json.loads(site.cli("doctor", "--json").stdout)
    assert any(
        f["code"] == "cert.expiry_warning"
        and f["server"] == "rs1"
        and "renewing its certificate failed" in f["message"]
        for f in findings
    )
    assert "[cert.expiry_warning] rs1: renewing its certificate" in site.log_text("rs1")
    # ... and its metrics say how many days are left
    text = _get(f"http://{rs1.address}:{rs1.ports['data']}/metrics")
    assert re.search(
        rf'watchkeep_certificate_days_left{{[^}}]*serial="{aged.serial}"[^}}]*}} (9\.9|10\.0)', text
    )
    assert re.search(r'watchkeep_certificate_renewal_failures{server="rs1",[^}]*} [1-9]', text)
    # A restart does not repeat the warnings.
    site.stop("rs1")
    site.start("rs1")
    eventually(
        lambda: site.log_text("rs1").count("recording server ready") == 2, what="rs1 up again"
    )
    assert (
        site.log_text("rs1").count(
            f"[cert.expiry_warning] rs1: its certificate (serial {aged.serial}"
        )
        == 2
    )


def test_metrics_on_every_server(make_site: Callable[..., LocalSite]) -> None:
    site = make_site(
        ("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING), ("mobile1", ServerRole.MOBILE)
    )
    ms, rs1, mobile = site.servers["ms"], site.servers["rs1"], site.servers["mobile1"]
    # mobile1 starts 65 days into its certificate's 90, on a plaintext management link
    site.issue(mobile, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=65))
    aged = SitePKI(site.home).find(f"mobile-{mobile.host}")
    for name in site.servers:
        site.start(name)
    # It renews all the same: its request is signed with the key of its certificate.
    eventually(
        lambda: SitePKI(site.home).find(f"mobile-{mobile.host}").serial != aged.serial,
        what="mobile1's renewal over plaintext",
    )
    assert "[cert.expiry_warning] mobile1: renewing" not in site.log_text("mobile1")
    ca_serial = format(site.pki.ca_certificate().serial_number, "x")
    urls = {
        "ms": f"http://{ms.address}:{ms.ports['api']}/metrics",
        "rs1": f"http://{rs1.address}:{rs1.ports['data']}/metrics",
        "mobile1": f"http://{mobile.address}:{mobile.ports['http']}/metrics",
    }
    for name, url in urls.items():
        text = eventually(lambda url=url: _get(url), what=f"{name} metrics")
        own = SitePKI(site.home).find(f"{site.servers[name].role.value}-{site.servers[name].host}")
        assert re.search(
            rf'watchkeep_certificate_days_left{{server="{name}",[^}}]*serial="{own.serial}"[^}}]*}} 89\.9|90\.0',
            text,
        )
        assert f'serial="{ca_serial}",kind="ca"' in text  # the CA itself is watched too
        assert "watchkeep_certificate_not_after_timestamp_seconds{" in text
    # The management server's scrape covers the whole site.
    text = eventually(
        lambda: 'server="rs1"' in (t := _get(urls["ms"])) and t, what="rs1 in the ms metrics"
    )
    assert 'server="mobile1"' in text
    # Once its certificate is revoked, rs1 cannot renew it: it says so at once, in one
    # line naming the commands that bring it back, and the status and doctor say so too.
    site.connect_cli()
    assert site.cli("cert", "revoke", f"recording-{rs1.host}").returncode == 0
    line = eventually(
        lambda: next(
            (ln for ln in site.log_text("rs1").splitlines() if "cannot renew" in ln), None
        ),
        what="rs1 to say it cannot renew",
    )
    assert "was revoked" in line
    assert "watchkeep enroll create --name rs1 --role recording" in line
    assert "watchkeep join TOKEN" in line
    assert "CANNOT RENEW" in eventually(
        lambda: "CANNOT RENEW" in (t := site.cli("site", "status").stdout) and t,
        what="the status to say so",
    )
    findings = json.loads(site.cli("doctor", "--json").stdout)
    assert any("can no longer renew itself" in f["message"] for f in findings)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http only
            return str(response.read().decode())
    except OSError:
        return ""


def test_ca_rotation_while_streaming(make_site: Callable[..., LocalSite], tmp_path: Path) -> None:
    # Given an encrypted site and a client streaming live video over TLS
    site = encrypted_site_with_camera(make_site)
    old_fp = site.pki.describe_ca()["sha256_fingerprint"]
    viewer = start_viewer(site, tmp_path / "live.mjpeg", 20)
    # When the CA is rotated
    result = site.cli("ca", "rotate", "--name", "Second Site CA", "--json", timeout=200)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    new_fp = info["new_ca_sha256_fingerprint"]
    assert info["old_ca_sha256_fingerprint"] == old_fp
    assert sorted(info["renewed"]) == sorted(
        f"{s.role.value}-{s.host}" for s in site.servers.values()
    )
    # Then every server serves a certificate from the new CA, to new connections ...
    for name in ("rs1",):
        assert served_certificate(site.servers[name]).issuer.rfc4514_string() == "CN=Second Site CA"
    assert (
        served_certificate(site.servers["ms"], "api").issuer.rfc4514_string() == "CN=Second Site CA"
    )
    # ... the client never noticed ...
    finish_viewer(viewer, tmp_path / "live.mjpeg")
    # ... and the old CA can now be retired, and leaves every trust store
    retire = site.cli("ca", "retire", old_fp[:16])
    assert retire.returncode == 0, retire.stderr
    for server in site.servers.values():
        eventually(
            lambda server=server: (
                not any(old_fp[:16] in p.name for p in server.trust_dir.glob("watchkeep-*.pem"))
            ),
            what=f"{server.name} to drop the old CA",
        )
    eventually(
        lambda: all(
            s["trusted_ca_fingerprints"] == [new_fp]
            for s in json.loads(site.cli("site", "status", "--json").stdout)["servers"]
        ),
        what="every server to report only the new CA",
    )


def test_retiring_the_old_ca_is_refused_while_it_issued_an_active_certificate(
    make_site: Callable[..., LocalSite],
) -> None:
    site = make_site(("ms", ServerRole.MANAGEMENT))
    old_fp = site.pki.describe_ca()["sha256_fingerprint"]
    # Rotate without a connected site: nothing is re-issued yet.
    assert site.cli("ca", "rotate").returncode == 0
    refused = site.cli("ca", "retire", old_fp[:16])
    assert refused.returncode != 0
    assert "management-ms.site.test" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert site.cli("cert", "renew", "--all").returncode == 0
    assert site.cli("ca", "retire", old_fp[:16]).returncode == 0
