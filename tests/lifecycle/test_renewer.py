"""The management server's renewer: due at 2/3 of the lifetime, retried with back-off on
failure, and the certificate that still works is never touched by a failed attempt."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from watchkeep._home import Home
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.servers._renewal import MIN_BACKOFF, Renewer

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_home(tmp_path: Path, passphrase: bytes | None = None) -> SitePKI:
    pki = SitePKI(Home(tmp_path / "ca"), passphrase=passphrase)
    pki.init_ca("Renewer Test CA", key_type=KeyType.ECDSA_P256)
    return pki


def test_only_certificates_past_their_renewal_time_are_due(tmp_path: Path) -> None:
    pki = make_home(tmp_path)
    pki.issue(Role.RECORDING, ["fresh.site.test"], key_type=KeyType.ECDSA_P256, now=NOW)
    pki.issue(
        Role.RECORDING,
        ["aged.site.test"],
        key_type=KeyType.ECDSA_P256,
        now=NOW - dt.timedelta(days=70),
    )
    renewer = Renewer(pki.home.root, None, 2 / 3, 0.05)
    # The test clock: now, and 65 days on.
    assert renewer.due(NOW) == ["recording-aged.site.test"]
    assert sorted(renewer.due(NOW + dt.timedelta(days=65))) == [
        "recording-aged.site.test",
        "recording-fresh.site.test",
    ]


def test_failure_backs_off_and_keeps_the_working_certificate(tmp_path: Path) -> None:
    # Given a passphrase-protected CA and a renewer that was given the wrong passphrase
    pki = make_home(tmp_path, passphrase=b"right horse battery")
    record = pki.issue(
        Role.RECORDING,
        ["rs1.site.test"],
        key_type=KeyType.ECDSA_P256,
        now=NOW - dt.timedelta(days=70),
    )
    files = {
        p: Path(p).read_bytes() for p in (record.cert_path, record.chain_path, record.key_path) if p
    }
    renewer = Renewer(pki.home.root, b"wrong", 2 / 3, 0.05)
    # When it tries
    state = renewer.renew(record.name, NOW)
    # Then it reports the failure, waits before the next try, and changed nothing
    assert state.failures == 1
    assert state.last_error is not None
    assert "passphrase" in state.last_error
    assert state.retry_at == NOW + dt.timedelta(seconds=MIN_BACKOFF)
    assert all(Path(p).read_bytes() == data for p, data in files.items())
    assert renewer.due(NOW + dt.timedelta(seconds=MIN_BACKOFF - 1)) == []
    assert renewer.due(NOW + dt.timedelta(seconds=MIN_BACKOFF)) == [record.name]
    second = renewer.renew(record.name, NOW + dt.timedelta(seconds=MIN_BACKOFF))
    assert second.retry_at == NOW + dt.timedelta(seconds=3 * MIN_BACKOFF)  # doubled
    # And with the right passphrase it succeeds and forgets the failures
    renewer.passphrase = b"right horse battery"
    done = renewer.renew(record.name, NOW + dt.timedelta(seconds=3 * MIN_BACKOFF))
    assert done.failures == 0
    assert done.serial != record.serial
    assert SitePKI(pki.home).find(record.name).serial == done.serial


def test_an_expired_certificate_is_renewed_in_one_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    pki = make_home(tmp_path)
    old = pki.issue(
        Role.RECORDING,
        ["off.site.test"],
        key_type=KeyType.ECDSA_P256,
        now=NOW - dt.timedelta(days=200),
    )
    assert old.not_after < NOW
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchkeep",
            "--home",
            str(pki.home.root),
            "cert",
            "renew",
            old.name,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = SitePKI(pki.home).find(old.name)
    assert fresh.serial != old.serial
    assert fresh.not_after > NOW + dt.timedelta(days=89)
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki.home.ca_cert),
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "off.site.test",
            fresh.cert_path,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
