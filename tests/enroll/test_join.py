"""Servers join a site with one-time tokens (`watchkeep enroll create`, `watchkeep join`).

Given a running management server that holds the CA (and, for one test, one that keeps it
offline), each test makes tokens as the administrator does and joins into a home of its
own, as a new machine would. Every refusal is one line with a fix and leaves nothing
written; a token works exactly once, also across a restart and when joins race with it.
The multi-host version, in network namespaces, is test_multihost.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from watchkeep._home import Home
from watchkeep.cli import main
from watchkeep.localsite._layout import LocalServer
from watchkeep.pki import SitePKI, fingerprint, load_private_key
from watchkeep.pki._enrollment import EnrollmentToken, join_request
from watchkeep.servers import load_config
from watchkeep.servers._signed import sign_request
from watchkeep.site import ServerRole
from watchkeep.store import create_engine
from watchkeep.testing import LocalSite, eventually, servers_by_name

TTL = "10m"


@pytest.fixture(scope="module")
def site(site_factory: Callable[..., LocalSite]) -> LocalSite:
    """A management server holding the CA, plaintext, with the CLI connected."""
    site = site_factory("enroll")
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.start("ms")
    site.connect_cli()
    return site


def everything_stored(site: LocalSite) -> bytes:
    """All the management server keeps of the site: its SQLite files (free pages and the
    write-ahead log too), or every row of every table of its PostgreSQL database."""
    if site.database_url is None:
        return b"".join(p.read_bytes() for p in site.management.data_dir.glob("site.db*"))
    engine = create_engine(site.database_url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            rows = [
                repr(tuple(row)) for table in tables.sorted_tables
                for row in connection.execute(sa.select(table))
            ]  # fmt: skip
    finally:
        engine.dispose()
    return "\n".join(rows).encode()


_names = iter(range(1, 10_000))


def enroll(
    site: LocalSite, role: str = "recording", ttl: str = TTL, **extra: Any
) -> dict[str, Any]:
    """A new token for a new server name (as `enroll create --json` prints it)."""
    name = f"s{next(_names)}"
    made = site.api(
        "POST",
        "/api/v1/enrollments",
        {"name": name, "role": role, "host": f"{name}.site.test", "ttl": ttl, **extra},
    )
    assert isinstance(made, dict)
    return made


def join(
    home: Path, token: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    """`watchkeep --home HOME join TOKEN`, in this process: (exit status, stderr)."""
    status = main(["--home", str(home), "join", token, *extra])
    return status, capsys.readouterr().err


def files_under(path: Path) -> list[Path]:
    """What a refused join left below ``path``: nothing at all, not even a directory."""
    return list(path.rglob("*")) if path.exists() else []


def assert_refused(status: int, err: str, *words: str) -> None:
    assert status != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "fix:" in lines[0], err
    for word in words:
        assert word in lines[0], err


def altered(token: str, **changes: Any) -> str:
    return dataclasses.replace(EnrollmentToken.decode(token), **changes).encode()


def post_join(site: LocalSite, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return post(site, "/api/v1/join", body)


def post(
    site: LocalSite, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST to the (plaintext) management API: (status, decoded answer)."""
    ms = site.management
    request = urllib.request.Request(
        f"http://{ms.address}:{ms.ports['api']}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 -- the test's own http:// URL
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def join_body(token: str, csr_pem: str) -> dict[str, Any]:
    """What `watchkeep join` posts for ``token`` and this CSR."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    return join_request(EnrollmentToken.decode(token), csr)


def csr_for(*hosts: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pending_names(site: LocalSite) -> set[str]:
    return {e["name"] for e in site.api("GET", "/api/v1/enrollments")}


# -- a join ------------------------------------------------------------------------------


def test_a_joined_server_has_its_own_key_certificate_and_config_and_registers(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a token made by `enroll create --json`
    ran = site.cli(
        "enroll", "create", "--name", "rs9", "--role", "recording", "--host", "rs9.site.test",
        "--ip", f"{site.network}.99", "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    made = json.loads(ran.stdout)
    assert set(made) == {"name", "role", "host", "expires_at", "token", "command"}
    assert made["command"] == f"watchkeep join {made['token']}"
    secret = EnrollmentToken.decode(made["token"]).secret
    # `enroll list` never shows the secret, and the management server keeps only its hash
    listed = site.cli("enroll", "list", "--json")
    assert "rs9" in listed.stdout
    assert secret not in listed.stdout
    stored = everything_stored(site)
    assert b"rs9" in stored
    assert secret.encode() not in stored

    # When the new machine joins with it
    home = tmp_path / "rs9-machine"
    status = main(["--home", str(home), "join", made["token"]])
    out = capsys.readouterr().out
    assert status == 0

    # Then its key was made here (0600, its account's), its certificate is for exactly the
    # bound names and chains to the site CA, and its config is complete
    config = load_config(Home(home).server_config("rs9"))
    assert (config.role, config.host, config.address) == (
        ServerRole.RECORDING, "rs9.site.test", f"{site.network}.99",
    )  # fmt: skip
    assert config.key is not None
    assert config.certificate is not None
    stat = config.key.stat()
    assert (stat.st_mode & 0o777, stat.st_uid) == (0o600, os.geteuid())
    assert config.management is not None
    assert config.management.registration_key is None
    cert = x509.load_pem_x509_certificates(config.certificate.read_bytes())[0]
    ca = SitePKI(site.home).ca_certificate()
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["rs9.site.test", f"{site.network}.99"]
    assert config.trust_store is not None
    assert any(config.trust_store.glob("*.r0"))
    assert f"watchkeep server run recording --config {config.path}" in out
    # the CA's home records the certificate, without a key
    record = SitePKI(site.home).find("recording-rs9.site.test")
    assert record.key_path is None
    assert record.sha256_fingerprint == fingerprint(cert)

    # And the server, started with the printed command, registers without any shared key
    # (its heartbeats on this plaintext link are signed with its certificate's key)
    site.servers["rs9"] = LocalServer.laid_out(
        Home(home), "rs9", ServerRole.RECORDING, "rs9.site.test", config.address,
        dict(config.ports),
    )  # fmt: skip
    site.start("rs9")
    eventually(lambda: servers_by_name(site.status()).get("rs9", {}).get("online"))

    # And the token works once
    again = tmp_path / "another-machine"
    status, err = join(again, made["token"], capsys)
    assert_refused(status, err, "rs9", "used", "works once")
    assert files_under(again) == []


def test_a_joined_server_must_prove_its_heartbeats_with_its_certificate(
    site: LocalSite,
) -> None:
    # Given rs9 joined (test above), stopped now, and the site's registration key
    site.stop("rs9")
    path = "/api/v1/servers/rs9/heartbeat"
    body = {
        "role": "recording",
        "host": "rs9.site.test",
        "address": f"{site.network}.99",
        "ports": {"data": 7563, "control": 9001},
        "registration_key": site.registration_key_file.read_text().strip(),
    }
    # When someone sends its heartbeat with the shared key but unsigned, or signed with
    # the certificate of another server of the site
    unsigned = post(site, path, body)
    ms = load_config(site.management.config)
    assert ms.key is not None
    assert ms.certificate is not None
    ms_cert = x509.load_pem_x509_certificates(ms.certificate.read_bytes())[0]
    now = dt.datetime.now(dt.UTC)
    other = post(site, path, body, sign_request(load_private_key(ms.key), ms_cert, "POST", path,
                                                body, now))  # fmt: skip
    # Then both are refused: the shared key does not speak for a server that joined
    assert unsigned[0] == 401
    assert "signed with its certificate" in unsigned[1]["detail"]
    assert other[0] == 401
    assert "names ms.site.test, not rs9.site.test" in other[1]["detail"]
    # And a heartbeat signed with rs9's own key is taken once, never replayed
    rs9 = load_config(site.servers["rs9"].config)
    assert rs9.key is not None
    assert rs9.certificate is not None
    rs9_cert = x509.load_pem_x509_certificates(rs9.certificate.read_bytes())[0]
    signed = sign_request(load_private_key(rs9.key), rs9_cert, "POST", path, body, now)
    assert post(site, path, body, signed)[0] == 200
    replayed = post(site, path, body, signed)
    assert replayed[0] == 401
    assert "replayed" in replayed[1]["detail"]


def test_the_joining_machine_chooses_its_key_type(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unknown key type is refused before anything is sent: the token stays usable
    made = enroll(site)
    status, err = join(tmp_path / "bad", made["token"], capsys, "--key-type", "dsa-1024")
    assert_refused(status, err, "dsa-1024", "ecdsa-p256")
    assert files_under(tmp_path / "bad") == []
    assert made["name"] in pending_names(site)
    # ... and an ECDSA P-256 key is made on the machine, and certified
    status, err = join(tmp_path / "ec", made["token"], capsys, "--key-type", "ecdsa-p256")
    assert status == 0, err
    config = load_config(Home(tmp_path / "ec").server_config(made["name"]))
    assert config.certificate is not None
    cert = x509.load_pem_x509_certificates(config.certificate.read_bytes())[0]
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"


# -- refusals, each with nothing written -------------------------------------------------


def test_a_wrong_fingerprint_stops_before_the_secret_is_sent(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = enroll(site)
    wrong = "ab" * 32
    status, err = join(tmp_path, altered(made["token"], ca_fingerprint=wrong), capsys)
    real = fingerprint(SitePKI(site.home).ca_certificate())
    assert_refused(status, err, wrong, real, "not sent")
    assert files_under(tmp_path) == []
    # the secret never reached the management server: the token is still pending
    assert made["name"] in pending_names(site)


def test_expired_used_withdrawn_and_altered_tokens_are_refused(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # expired, seen here before anything is sent
    short = enroll(site, ttl="1s")
    time.sleep(1.5)
    status, err = join(tmp_path / "a", short["token"], capsys)
    assert_refused(status, err, "expired", "enroll create")
    # expired, with its expiry edited: the management server's own record decides
    later = EnrollmentToken.decode(short["token"]).expires_at + dt.timedelta(hours=1)
    forged = altered(short["token"], expires_at=later)
    status, err = join(tmp_path / "b", forged, capsys)
    assert_refused(status, err, short["name"], "expired at")
    # withdrawn with `enroll revoke`
    withdrawn = enroll(site)
    ran = site.cli("enroll", "revoke", withdrawn["name"])
    assert ran.returncode == 0, ran.stderr
    assert withdrawn["name"] not in pending_names(site)
    status, err = join(tmp_path / "c", withdrawn["token"], capsys)
    assert_refused(status, err, "withdrawn")
    # for another name, or another role: the management server compares with what it issued
    other = enroll(site)
    status, err = join(tmp_path / "d", altered(other["token"], name="intruder"), capsys)
    assert_refused(status, err, other["name"], "altered")
    status, err = join(tmp_path / "e", altered(other["token"], role=ServerRole.MOBILE), capsys)
    assert_refused(status, err, "not for", "mobile", "altered")
    # a secret it never issued
    status, err = join(tmp_path / "f", altered(other["token"], secret="x" * 43), capsys)
    assert_refused(status, err, "not one this management server issued")
    # not a token at all
    status, err = join(tmp_path / "g", other["token"][:-9], capsys)
    assert_refused(status, err, "malformed")
    for home in "abcdefg":
        assert files_under(tmp_path / home) == [], home
    # none of it used the real token
    assert other["name"] in pending_names(site)
    # and the administrator cannot make a second token for it, nor one that lives a month
    for refused in (
        ("--name", other["name"], "--host", other["host"]),
        ("--name", "s-month", "--host", "s-month.site.test", "--ttl", "30d"),
    ):
        ran = site.cli("enroll", "create", "--role", "recording", *refused)
        assert ran.returncode == 1
        assert ran.stderr.count("\n") == 1
        assert "fix: " in ran.stderr
    assert "s-month" not in pending_names(site)


def test_an_unreachable_management_server_and_an_unknown_account_are_refused(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = enroll(site)
    nobody = f"{site.network}.250"  # no server there
    status, err = join(tmp_path, altered(made["token"], ms_addresses=(nobody,)), capsys)
    assert_refused(status, err, "unreachable", nobody)
    status, err = join(tmp_path, made["token"], capsys, "--service-account", "wk-no-such-user")
    assert_refused(status, err, "wk-no-such-user", "does not exist")
    assert files_under(tmp_path) == []
    # an account that could not reach its key in this home (pytest's directories are
    # their owner's alone): refused before the token is sent
    if os.geteuid() == 0 and (tmp_path.stat().st_mode & 0o001) == 0:
        status, err = join(tmp_path / "home", made["token"], capsys, "--service-account", "nobody")
        assert_refused(status, err, "nobody", "could not reach")
        assert files_under(tmp_path) == []
    assert made["name"] in pending_names(site)


def test_a_csr_for_other_names_is_refused_and_the_token_stays_usable(site: LocalSite) -> None:
    made = enroll(site)
    for hosts in (["evil.site.test"], [made["host"], "evil.site.test"]):
        status, answer = post_join(site, join_body(made["token"], csr_for(*hosts)))
        assert status == 403, answer
        assert answer["code"] == "cert.hostname"
        assert "exactly" in answer["detail"]
    assert made["name"] in pending_names(site)
    status, answer = post_join(site, join_body(made["token"], csr_for(made["host"])))
    assert status == 201, answer


def test_a_token_is_consumed_once_when_joins_race_and_across_a_restart(site: LocalSite) -> None:
    made = enroll(site)
    body = join_body(made["token"], csr_for(made["host"]))
    # When eight joins race with one token
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(s for s, _ in pool.map(lambda _: post_join(site, body), range(8)))
    # Then exactly one is signed
    assert statuses == [201] + [403] * 7
    # And after the management server restarts, the token is still used
    site.stop("ms")
    site.start("ms")
    status, answer = post_join(site, body)
    assert status == 403
    assert "used" in answer["detail"]


class Tap:
    """A TCP relay on the site's loopback network that keeps every byte it relays: the
    network between a joining machine and a plaintext management server, seen."""

    def __init__(self, address: str, upstream: tuple[str, int]) -> None:
        self.seen = bytearray()
        self._upstream = upstream
        self._listener = socket.create_server((address, 0))
        self._listener.settimeout(30)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self._upstream, timeout=30) as server:
            ends = {client: server, server: client}
            deadline = time.monotonic() + 30
            while ends and time.monotonic() < deadline:
                ready, _, _ = select.select(list(ends), [], [], 1)
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        ends.clear()
                        break
                    self.seen += data
                    ends[end].sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)


def test_a_join_seen_in_transit_joins_no_other_key(
    site: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a token, and the network between the new machine and the plaintext management
    # server seen by someone (a relay that keeps every byte)
    made = enroll(site)
    secret = EnrollmentToken.decode(made["token"]).secret
    ms = site.management
    tap = Tap(f"{site.network}.78", (ms.address, ms.ports["api"]))
    try:
        # When the new machine joins through it
        via_tap = altered(made["token"], ms_addresses=(f"{site.network}.78",), ms_port=tap.port)
        status = main(["--home", str(tmp_path / "joined"), "join", via_tap])
        err = capsys.readouterr().err
        assert status == 0, err
        assert "the token's secret did not" in err
    finally:
        tap.close()
    # Then the secret was not on the network, in any form the token holds it in
    seen = bytes(tap.seen)
    assert b"POST /api/v1/join" in seen
    assert secret.encode() not in seen
    assert made["token"].encode() not in seen
    # ... and what was seen joins nothing: the join sent again is refused (the token was
    # used), and so is one with the watcher's own key, made before the new machine's join
    request = seen[seen.index(b"POST /api/v1/join") :]
    captured = json.loads(request[request.index(b"\r\n\r\n") + 4 :].split(b"HTTP/1.1")[0])
    assert post_join(site, captured)[0] == 403
    second = enroll(site)
    own_key = join_body(second["token"], csr_for(second["host"]))
    own_key["csr"] = csr_for(second["host"])  # the watcher's CSR under the seen proof
    status, answer = post_join(site, own_key)
    assert status == 403, answer
    assert "proof" in answer["detail"]
    assert second["name"] in pending_names(site)
    # (the request with the proof it was made with is taken)
    assert post_join(site, join_body(second["token"], own_key["csr"]))[0] == 201


def test_a_killed_join_leaves_nothing_half_written_and_is_repeated_with_a_new_token(
    site: LocalSite, tmp_path: Path
) -> None:
    home = Home(tmp_path / "machine")
    rng = random.Random(14)  # noqa: S311 -- picks moments to kill, not secrets
    name = f"k{next(_names)}"
    joined = False
    for attempt in range(4):
        made = site.api(
            "POST", "/api/v1/enrollments",
            {"name": name, "role": "recording", "host": f"{name}.site.test", "ttl": TTL},
        )  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "watchkeep", "--home", str(home.root), "join", made["token"]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if attempt < 3:
            # Killed somewhere between start-up and its last write
            time.sleep(rng.uniform(0.3, 1.5))
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        target = home.server_dir(name)
        # Then the server's directory is there in full, or not at all
        if target.exists():
            config = load_config(home.server_config(name))
            assert config.key is not None
            assert config.key.exists()
            assert config.certificate is not None
            assert config.certificate.exists()
            joined = True
            break
        if name in pending_names(site):  # killed before it sent the token
            site.api("DELETE", f"/api/v1/enrollments/{name}")
    # And a join that runs to its end joins, whatever earlier ones left behind
    assert joined
    assert [p.name for p in home.servers_dir.iterdir()] == [name]


def test_a_ca_kept_offline_makes_enrollment_answer_that_it_is_offline(
    site: LocalSite,
    site_factory: Callable[..., LocalSite],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a management server without a CA home
    offline = site_factory("offline", auto_renew=False)
    ms = offline.add_server("ms", ServerRole.MANAGEMENT)
    offline.start("ms")
    offline.connect_cli()
    # When an administrator asks it for a token, or a server joins it (with a token of
    # another site, pointed at it: it never made one)
    ran = offline.cli("enroll", "create", "--name", "rs1", "--role", "recording", "--host",
                      "rs1.site.test")  # fmt: skip
    token = altered(
        enroll(site)["token"],
        ms_addresses=(ms.address,),
        ca_fingerprint=fingerprint(SitePKI(offline.home).ca_certificate()),
    )
    status, err = join(tmp_path, token, capsys)
    # Then each hears, in one line with the fix, that the CA is offline, and nothing is
    # written
    assert ran.returncode == 1
    assert ran.stderr.count("\n") == 1
    assert "CA is kept offline" in ran.stderr
    assert "fix:" in ran.stderr
    assert "sign-csr" in ran.stderr
    assert_refused(status, err, "enroll.ca_offline", "CA is kept offline")
    assert files_under(tmp_path) == []
