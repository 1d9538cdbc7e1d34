"""Helpers for the certificate-authority tests: CLI runners, oracles, a loopback TLS server.

Fixtures live in conftest.py beside this file; this module holds what the tests call
directly. Everything is generated at test time: CAs, keys and certificates come from
watchkeep itself (the code under test) and are judged by independent oracles (`openssl`,
pkilint, `cryptography.x509.verification`, Python's `ssl` in a real handshake).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from watchkeep._clock import utcnow
from watchkeep._home import Home
from watchkeep.cli import main
from watchkeep.pki import KeyType, SitePKI

BIN = Path(sys.executable).parent
WATCHKEEP_SCRIPT = BIN / "watchkeep"


# -- running watchkeep --------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """What one `watchkeep` invocation did: exit status, standard output and error."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_cli(home: Path, *argv: str | Path) -> Ran:
    """Run ``watchkeep --home HOME ARGV`` in this process, through ``main(argv)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--home", str(home), *map(str, argv)])
        except SystemExit as exc:  # argparse reports usage errors by exiting
            code = exc.code if isinstance(exc.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())


def watchkeep_command(*, script: bool = False) -> list[str]:
    """`python -m watchkeep`, or the installed console script."""
    return [str(WATCHKEEP_SCRIPT)] if script else [sys.executable, "-m", "watchkeep"]


def run_process(
    home: Path,
    *argv: str | Path,
    script: bool = False,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> Ran:
    """Run watchkeep as a process of its own (``env`` adds to the environment)."""
    result = subprocess.run(
        [*watchkeep_command(script=script), "--home", str(home), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    return Ran(result.returncode, result.stdout, result.stderr)


def new_site(root: Path, *, key_type: KeyType = KeyType.ECDSA_P256, name: str = "Test CA") -> Home:
    """A home with a fresh CA (ECDSA by default: made in microseconds)."""
    home = Home(root)
    SitePKI(home).init_ca(name, key_type=key_type)
    return home


_counter = itertools.count(1)


def unique_host(prefix: str = "h") -> str:
    """A host name no other test of this session uses, so a shared CA never sees a duplicate."""
    return f"{prefix}{next(_counter)}.site.example"


# -- oracles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """The verdict of `openssl verify`."""

    code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0 and ": OK" in self.output

    def has_error(self, number: int, depth: int = 0) -> bool:
        return f"error {number} at {depth} depth lookup" in self.output


def openssl_verify(cert: Path | str, *options: str | Path) -> Verified:
    result = subprocess.run(
        ["openssl", "verify", *map(str, options), str(cert)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return Verified(result.returncode, result.stdout + result.stderr)


def self_signed(name: x509.Name) -> x509.Certificate:
    """A throw-away self-signed certificate with subject ``name`` (for hash tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def public_der(key_or_cert: Any) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a private key, certificate or CSR."""
    der: bytes = key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


# -- a TLS server on loopback -------------------------------------------------------------


class LoopbackTLSServer:
    """Accepts TLS on ADDRESS:port and greets every client that completes a handshake.

    Handshake failures are the client's business in these tests: the server drops the
    connection and waits for the next one.
    """

    GREETING = b"watchkeep-test\n"

    def __init__(self, context: ssl.SSLContext, address: str) -> None:
        self.context = context
        self._sock = socket.create_server((address, 0))
        self._sock.settimeout(0.05)
        self.address = address
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(self.GREETING)
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def client_context(cafile: Path | str, *, crl: Path | str | None = None) -> ssl.SSLContext:
    """A client context as watchkeep's clients must build one: SAN only, CRL when given."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = True
    context.hostname_checks_common_name = False
    if crl is not None:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.load_verify_locations(cafile=str(crl))
    return context


def tls_fetch(server: LoopbackTLSServer, server_hostname: str, context: ssl.SSLContext) -> bytes:
    """Handshake with ``server`` as ``server_hostname`` and read its greeting."""
    with (
        socket.create_connection((server.address, server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(len(LoopbackTLSServer.GREETING))


# -- "nothing changed" --------------------------------------------------------------------

# SQLite's database, write-ahead log and shared-memory files change with every connection;
# the inventory they hold is compared through `cert list --all --json` instead.
_DATABASE_FILES = {"watchkeep.db", "watchkeep.db-wal", "watchkeep.db-shm", "watchkeep.db-journal"}


def tree_snapshot(*roots: Path) -> dict[str, tuple[int, bytes]]:
    """Every directory, file and link under ``roots``: its mode and content (or target)."""
    snapshot: dict[str, tuple[int, bytes]] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                if name in _DATABASE_FILES:
                    continue
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                if path.is_symlink():
                    data = os.readlink(path).encode()
                elif path.is_dir():
                    data = b"<directory>"
                else:
                    data = path.read_bytes()
                snapshot[str(path)] = (mode, data)
    return snapshot


def inventory_snapshot(home: Path) -> list[dict[str, Any]]:
    """`cert list --all --json` without the one field that moves with the clock."""
    ran = run_cli(home, "cert", "list", "--all", "--json")
    assert ran.code == 0, ran.err
    rows: list[dict[str, Any]] = ran.json()
    for row in rows:
        row.pop("days_left")
    return rows


@contextlib.contextmanager
def unchanged(home: Path, *dirs: Path) -> Iterator[None]:
    """Fail if the block adds, removes or changes a file under ``home``/``dirs``, or a row."""
    files_before = tree_snapshot(home, *dirs)
    rows_before = inventory_snapshot(home)
    yield
    files_after = tree_snapshot(home, *dirs)
    added = sorted(set(files_after) - set(files_before))
    removed = sorted(set(files_before) - set(files_after))
    changed = sorted(
        p for p in set(files_after) & set(files_before) if files_after[p] != files_before[p]
    )
    assert (added, removed, changed) == ([], [], []), "a refused command changed files"
    assert inventory_snapshot(home) == rows_before, "a refused command changed the inventory"


def single_error_line(ran: Ran, *needles: str) -> str:
    """The one line a failing command printed on stderr, checked to contain ``needles``."""
    assert ran.out == "", f"a failing command printed on stdout: {ran.out!r}"
    lines = ran.err_lines
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def rs1_config(
    directory: Path, chain: str, key: str, *, account: str | None = None, trust: Path | None = None
) -> Path:
    """A recording server rs1's config on loopback, for the doctor's --server-config."""
    config = directory / "rs1.toml"
    server = f'service_account = "{account}"\n' if account else ""
    store = f'trust_store = "{trust}"\n' if trust else ""
    config.write_text(
        f"""[server]
name = "rs1"
role = "recording"
host = "rs1.site.example"
address = "127.0.0.2"
data_dir = "{directory / "rs1-data"}"
{server}
[tls]
certificate = "{chain}"
key = "{key}"
{store}
[management]
host = "ms.site.example"
address = "127.0.0.2"
"""
    )
    return config
