"""Interrupted commands leave nothing half-written.

Given a `watchkeep` process, when it is killed with SIGKILL at a random moment (anywhere in
its run, or just after it starts writing files), then every key and certificate file that
exists parses, every inventory row has its files, and the site can go on: the command run
again either finds its work done or does it.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki_support import public_der, run_cli, watchkeep_command

from watchkeep import _files
from watchkeep._home import Home
from watchkeep.errors import DuplicateCertificate, OutputNotWritable
from watchkeep.pki import KeyType, Role, SitePKI, fingerprint

ROUNDS = 5  # of each kind: killed anywhere, killed once writing has begun


def listing(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def kill_at_random(
    command: list[str], rng: random.Random, *, watch: Path | None, typical: float
) -> str:
    """Start ``command`` and SIGKILL it: at a random time within ``typical`` seconds, or,
    when ``watch`` is given, a random 0-10 ms after the first change in that directory."""
    before = listing(watch) if watch is not None else set()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if watch is None:
        delay = rng.uniform(0, typical * 1.1)
        time.sleep(delay)
        when = f"{delay * 1000:.0f} ms after start"
    else:
        deadline = time.monotonic() + 30
        while process.poll() is None and listing(watch) == before:
            if time.monotonic() > deadline:
                break
            time.sleep(0.0002)
        delay = rng.uniform(0, 0.01)
        time.sleep(delay)
        when = f"{delay * 1000:.1f} ms after writing began"
    process.kill()
    process.wait(timeout=30)
    return f"{when} (exit status {process.returncode})"


def typical_duration(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - start


def check_certificate_files(
    home: Home, directory: Path, context: str, *, settled: bool = True
) -> None:
    """Every key and certificate file parses, every inventory row has its files and, unless
    a renewal was just cut short (``settled`` false), each active row's files are its own."""
    for path in directory.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue  # temporary files of an interrupted write are never used
        data = path.read_bytes()
        if path.suffix == ".key":
            serialization.load_pem_private_key(data, password=None)
        elif path.suffix == ".pem":
            assert x509.load_pem_x509_certificates(data), f"{path} is empty; {context}"
    for record in SitePKI(home).certificates(include_history=True):
        cert = x509.load_pem_x509_certificate(Path(record.cert_path).read_bytes())
        chain = x509.load_pem_x509_certificates(Path(record.chain_path).read_bytes())
        key = (
            serialization.load_pem_private_key(Path(record.key_path).read_bytes(), password=None)
            if record.key_path is not None
            else None
        )
        # A renewal reuses the paths, so only the active row's files are its own.
        if settled and record.status == "active":
            assert fingerprint(cert) == record.sha256_fingerprint, context
            assert chain[0] == cert, context
            if key is not None:
                assert public_der(key) == public_der(cert), (
                    f"{record.name}: key mismatch; {context}"
                )


@pytest.mark.parametrize("moment", ["anywhere", "while writing"])
def test_cert_issue_killed_leaves_only_whole_files_and_rows(
    home: Home, moment: str, rng: random.Random
) -> None:
    def command(host: str) -> list[str]:
        return [*watchkeep_command(), "--home", str(home.root), "cert", "issue",
                "--role", "recording", "--host", host, "--key-type", "ecdsa-p256"]  # fmt: skip

    typical = typical_duration(command("warm-up.site.example"))
    for n in range(ROUNDS):
        host = f"rs{n}.kill.example"
        watch = home.certs_dir if moment == "while writing" else None
        context = f"killed {kill_at_random(command(host), rng, watch=watch, typical=typical)}"
        check_certificate_files(home, home.certs_dir, context)

        # And the site goes on: the host is recorded with its files, or can be issued now
        if not any(host in r.hosts for r in SitePKI(home).certificates()):
            ran = run_cli(home.root, *command(host)[3:])
            assert ran.code == 0, f"{ran.err}; {context}"
        check_certificate_files(home, home.certs_dir, context)


@pytest.mark.parametrize("moment", ["anywhere", "while writing"])
def test_ca_init_killed_never_leaves_a_ca_without_its_key(
    tmp_path: Path, moment: str, rng: random.Random
) -> None:
    def command(root: Path) -> list[str]:
        return [*watchkeep_command(), "--home", str(root), "ca", "init",
                "--name", "Interrupted CA", "--key-type", "ecdsa-p256"]  # fmt: skip

    typical = typical_duration(command(tmp_path / "warm-up"))
    for n in range(ROUNDS):
        home = Home(tmp_path / f"home{n}")
        watch = home.root if moment == "while writing" else None
        if watch is not None:
            watch.mkdir()
        context = f"killed {kill_at_random(command(home.root), rng, watch=watch, typical=typical)}"

        if home.ca_cert.exists():
            cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
            assert home.ca_key.exists(), f"ca.pem without ca.key; {context}"
            key = serialization.load_pem_private_key(home.ca_key.read_bytes(), password=None)
            assert public_der(key) == public_der(cert), f"ca.key does not match; {context}"
            assert run_cli(home.root, "ca", "show", "--json").code == 0
        else:
            # No CA: `ca init` run again must make one (an interrupted init is no obstacle)
            ran = run_cli(home.root, "ca", "init", "--name", "Again", "--key-type", "ecdsa-p256")
            assert ran.code == 0, f"{ran.err}; {context}"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("WATCHKEEP_TEST_SEED", time.time_ns()))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed {seed} (set WATCHKEEP_TEST_SEED to replay)")
    return random.Random(seed)  # noqa: S311 -- picks moments to kill, not secrets


def test_cert_renew_killed_then_run_again_leaves_a_matching_pair(
    home: Home, rng: random.Random
) -> None:
    record = SitePKI(home).issue(Role.RECORDING, ["rs.renew.example"], key_type=KeyType.ECDSA_P256)
    command = [*watchkeep_command(), "--home", str(home.root), "cert", "renew", record.name]
    for _ in range(ROUNDS):
        context = f"killed {kill_at_random(command, rng, watch=home.certs_dir, typical=1)}"
        check_certificate_files(home, home.certs_dir, context, settled=False)
        # Whatever the kill left, renewing again puts a matching key and certificate in
        # place and records them as the one active certificate of that name.
        ran = run_cli(home.root, "cert", "renew", record.name, "--json")
        assert ran.code == 0, f"{ran.err}; {context}"
        check_certificate_files(home, home.certs_dir, context)
        active = SitePKI(home).certificates()
        assert [r.name for r in active] == [record.name]
        assert active[0].serial == ran.json()["serial"]


def test_files_written_together_are_all_staged_before_any_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [tmp_path / "k.key", tmp_path / "c.chain.pem", tmp_path / "c.pem"]
    for path in targets:
        path.write_bytes(b"old\n")
    renames: list[tuple[Path, list[bytes]]] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        staged = sorted(p for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        renames.append((Path(dst), [p.read_bytes() for p in staged]))
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "replace", spy)
    _files.atomic_write_together([(p, f"new {p.name}\n".encode(), 0o600) for p in targets])

    # When the first file is replaced, every new file is already written in full
    assert [dst for dst, _ in renames] == targets
    assert sorted(renames[0][1]) == sorted(f"new {p.name}\n".encode() for p in targets)
    assert [p.read_bytes() for p in targets] == [f"new {p.name}\n".encode() for p in targets]


def test_files_written_together_change_none_when_one_cannot_be_written(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.key", tmp_path / "c.pem"
    key.write_bytes(b"old key\n")
    cert.write_bytes(b"old cert\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(OutputNotWritable):
        _files.atomic_write_together(
            [(key, b"new key\n", 0o600), (cert, b"new cert\n", 0o644), (blocker / "x", b"", 0o644)]
        )
    assert (key.read_bytes(), cert.read_bytes()) == (b"old key\n", b"old cert\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "c.pem", "k.key"]


def test_concurrent_issues_for_one_host_yield_one_certificate(home: Home) -> None:
    # Given several commands racing to issue the same host and role (threads here: each
    # SitePKI takes the home's lock as a separate process would)
    racers = 4
    barrier = threading.Barrier(racers)
    outcomes: list[object] = []

    def race() -> None:
        pki = SitePKI(home)
        pki.authority()  # load the CA before the start, so that all reach the check together
        barrier.wait()
        try:
            outcomes.append(
                pki.issue(Role.RECORDING, ["rs.race.example"], key_type=KeyType.ECDSA_P256)
            )
        except DuplicateCertificate as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then exactly one wins, the others are refused, and the files are the winner's
    issued = [o for o in outcomes if not isinstance(o, DuplicateCertificate)]
    assert len(outcomes) == racers
    assert len(issued) == 1, outcomes
    assert [r.name for r in SitePKI(home).certificates(include_history=True)] == [
        "recording-rs.race.example"
    ]
    check_certificate_files(home, home.certs_dir, "after a race")
