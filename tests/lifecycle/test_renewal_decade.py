"""A decade of a site's certificates on a test clock: 90-day certificates renewed by their
own servers over the network, three CA rotations, the management server down across one
renewal window, while a viewer streams live video the whole time.

The test clock (``WATCHKEEP_TEST_CLOCK``) moves "now" for every process of the site and
for OpenSSL's verification in them; the test moves it from one renewal window to the next,
so that ten years pass in seconds, and nothing waits for real time.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from watchkeep._clock import TEST_CLOCK_ENV, set_test_clock, utcnow
from watchkeep.pki import SitePKI
from watchkeep.pki._lifecycle import renewal_time
from watchkeep.pki._rotation import refresh_crls
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite, eventually
from watchkeep.trust import DirectoryTrustStore

pytestmark = pytest.mark.slow

DECADE = dt.timedelta(days=3652)
ROTATIONS = 3


def leaf(server: LocalServer) -> x509.Certificate:
    return x509.load_pem_x509_certificates(server.chain.read_bytes())[0]


def due(cert: x509.Certificate) -> dt.datetime:
    return renewal_time(
        cert.not_valid_before_utc, cert.not_valid_after_utc, serial=format(cert.serial_number, "x")
    )


class Clock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = dt.timedelta(0)

    def move_to(self, when: dt.datetime) -> None:
        self.offset = when - dt.datetime.now(dt.UTC)
        set_test_clock(self.path, self.offset)


def fresh_admin_crls(site: LocalSite) -> None:
    """The administrator's trust store (the CLI's) gets fresh CRLs, as on the CA's machine."""
    for pem in refresh_crls(SitePKI(site.home)):
        DirectoryTrustStore(site.home.trust_dir).install_crl(pem)


def renewed_all(servers: list[LocalServer], before: dict[str, int]) -> bool:
    return all(leaf(s).serial_number != before[s.name] for s in servers)


def wait_renewed(
    clock: Clock, servers: list[LocalServer], before: dict[str, int], what: str
) -> None:
    """Wait for every server to renew; time goes on meanwhile (an hour every 0.5 s), as it
    would: a server whose attempt met a moment of the clock's jump (a CRL not re-signed
    yet) retries after its back-off, and a frozen clock would never get there."""
    for _ in range(60):
        try:
            eventually(lambda: renewed_all(servers, before), what=what, timeout=0.5)
            return
        except AssertionError:
            clock.move_to(utcnow() + dt.timedelta(hours=1))
    raise AssertionError(f"{what}: not within 60 simulated hours")


def test_a_decade_of_renewals_rotations_and_an_outage_while_streaming(
    make_site: Callable[..., LocalSite],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(tmp_path / "clock")
    set_test_clock(clock.path, dt.timedelta(0))
    monkeypatch.setenv(TEST_CLOCK_ENV, str(clock.path))
    # Given an encrypted site whose servers look every 0.1 s whether to renew
    site = make_site(
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        renew_check_interval=0.1,
    )
    site.start_all()
    assert site.cli("camera", "add", "cam1", "--recording-server", "rs1", "--synthetic",
                    "320x180@10").returncode == 0  # fmt: skip
    site.encrypt_everything()
    servers = list(site.servers.values())
    ms, rs1 = site.servers["ms"], site.servers["rs1"]
    # ... and a viewer streaming live video over TLS from rs1 all along
    out = tmp_path / "live.mjpeg"
    viewer = subprocess.Popen(
        [sys.executable, "-m", "watchkeep", "--home", str(site.home.root), "view", "cam1",
         "--seconds", "900", "--json", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    eventually(lambda: out.exists() and out.stat().st_size > 0, what="the first frames")
    start = utcnow()
    outage_serial = ""
    rotated = 0
    renewals = 0
    # When ten years pass, window after window
    while utcnow() - start < DECADE:
        before = {s.name: leaf(s).serial_number for s in servers}
        years = (utcnow() - start) / dt.timedelta(days=365.25)
        if rotated < ROTATIONS and years >= 2.5 * (rotated + 1):
            rotated += 1
            # The CA rotates: every server renews from the new CA, the old one retires.
            fresh_admin_crls(site)
            old = SitePKI(site.home).describe_ca()["sha256_fingerprint"]
            result = site.cli("ca", "rotate", "--name", f"Site CA {rotated + 1}", "--json")
            assert result.returncode == 0, result.stderr + site.log_tails()
            assert renewed_all(servers, before)
            retired = site.cli("ca", "retire", old[:16])
            assert retired.returncode == 0, retired.stderr
            continue
        target = max(due(leaf(s)) for s in servers) + dt.timedelta(hours=1)
        if not outage_serial and years >= 4:
            # ... and once, the management server is down across rs1's renewal window:
            outage_serial = format(leaf(rs1).serial_number, "x")
            not_after = leaf(rs1).not_valid_after_utc

            def failures() -> int:
                return int(json.loads((rs1.data_dir / "renewal.json").read_text())["failures"])

            site.stop("ms")
            clock.move_to(due(leaf(rs1)) + dt.timedelta(hours=1))
            # (a renewal that succeeded counts no failures: these are the outage's)
            eventually(lambda: failures() >= 1, what="a failure")
            for days_left in (13.5, 6.5):  # rs1 keeps trying, and warns as time runs out
                tried = failures()
                clock.move_to(not_after - dt.timedelta(days=days_left))
                eventually(
                    lambda d=days_left: f"under {int(d) + 1} days" in site.log_text("rs1"),
                    what=f"the warning at {days_left} days",
                )
                # each try past its back-off is counted before the clock moves on again
                eventually(lambda t=tried: failures() > t, what="rs1 to count its attempt")
            assert failures() >= 3
            site.start("ms")
            # Then the renewal happens once it is back (within the longest back-off)
            clock.move_to(utcnow() + dt.timedelta(hours=1))
            wait_renewed(clock, servers, before, "renewals after the outage")
            renewals += 1
            continue
        clock.move_to(target)
        wait_renewed(clock, servers, before, f"renewals at {target:%Y-%m-%d}")
        renewals += 1
    # Then every server served every window with a certificate it renewed itself ...
    assert renewals >= 55
    assert rotated == ROTATIONS
    assert viewer.poll() is None, "the viewer must stream across the whole decade"
    fresh_admin_crls(site)
    for server in servers:
        cert = leaf(server)
        served = SitePKI(site.home).find(format(cert.serial_number, "x")).sha256_fingerprint
        reported = eventually(
            lambda server=server, served=served: (
                (s := {x["name"]: x for x in site.status()["servers"]}[server.name])["certificate"][
                    "sha256_fingerprint"
                ]
                == served
                and s
            ),
            what=f"{server.name} reporting its last certificate",
        )
        assert reported["renewal"]["failures"] == 0
        assert reported["renewal"]["next_renewal_at"] == f"{due(cert):%Y-%m-%dT%H:%M:%SZ}"
        assert cert.issuer.rfc4514_string() == f"CN=Site CA {ROTATIONS + 1}"
    # ... every threshold a certificate crossed was warned exactly once, by each server ...
    for server in servers:
        said = re.findall(
            r"\[cert\.expiry_warning\] (\S+): its certificate \(serial (\w+),.*under (\d+) days",
            site.log_text(server.name),
        )
        repeated = [k for k, n in _count(said).items() if n > 1]
        assert repeated == [], f"{server.name} warned twice: {repeated[:5]}"
    rs_said = _count(
        re.findall(
            r"\[cert\.expiry_warning\] rs1: its certificate \(serial (\w+),.*under (\d+) days",
            site.log_text("rs1"),
        )
    )
    assert {t for (s, t) in rs_said if s == outage_serial} == {"30", "14", "7"}
    assert "keeping the certificate in use" not in site.log_text("rs1")
    # ... and the viewer lost no frame and never reconnected
    viewer.send_signal(signal.SIGINT)  # it stops and reports what it saw
    stdout, stderr = viewer.communicate(timeout=60)
    assert viewer.returncode == 0, stderr
    report = json.loads(stdout)
    sequences = [int(s) for s in re.findall(rb"X-Sequence: (\d+)", out.read_bytes())]
    gaps = [(a, b) for a, b in itertools.pairwise(sequences) if b != a + 1]
    assert gaps == []
    assert report["reconnects"] == 0
    assert report["encrypted"] is True
    assert ms.process is not None


def _count(items: list[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
