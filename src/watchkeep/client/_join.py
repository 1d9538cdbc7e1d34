"""`watchkeep join TOKEN`: a new server's machine joins the site with a one-time token.

In this order, each step before anything is written or any secret sent:

1. the token is read, the service account looked up, the token's expiry checked;
2. the site CA is fetched from the management server without verifying the connection and
   taken only if its SHA-256 fingerprint is the token's (nothing of the token is sent
   before that);
3. the private key is made here, in a staging directory beside the server's (mode 0600,
   owned by the service account, written atomically); it never leaves this machine;
4. the CSR goes to the management server (over TLS verified with that CA when the
   management server speaks TLS) with a proof of the token's secret: a signature over the
   management server's host, the server's name and the CSR (:func:`join_request`); the
   secret itself is sent nowhere, so a join seen in transit joins no other key. The
   management server signs the CSR for exactly the names the token binds; the answer is
   checked: the certificate is for this key, signed by that CA, for those names;
5. the chain, the trust store (the CA and the site's CRLs), the data directory and a
   complete ``server.toml`` are written into the staging directory, which is then renamed
   to ``HOME/servers/NAME``.

A join killed half-way leaves at most a staging directory (``.NAME.join-*``, removed by the
next join) and never a server directory; it is repeated with a new token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pwd
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from watchkeep._clock import utcnow
from watchkeep._files import atomic_write, fsync_directory
from watchkeep._home import Home
from watchkeep.client._http import call_json, open_session
from watchkeep.errors import ConnectionFailed, HomeError, TrustError, UsageError
from watchkeep.pki import (
    KeyType,
    Role,
    certificate_name,
    generate_key,
    same_public_key,
    san_dns_names,
    san_ip_addresses,
)
from watchkeep.pki._enrollment import EnrollmentToken, join_request
from watchkeep.pki._keys import private_key_pem
from watchkeep.site import DEFAULT_PORTS
from watchkeep.tls import Endpoint, TlsPolicy
from watchkeep.trust import DirectoryTrustStore, fetch_ca_by_fingerprint

__all__ = ["Joined", "join_site"]


@dataclass(frozen=True)
class Joined:
    name: str
    role: str
    host: str
    address: str
    directory: Path
    config: Path
    service_account: str
    serial: str
    not_after: str
    command: str
    encrypted_link: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "address": self.address,
            "directory": str(self.directory),
            "config": str(self.config),
            "service_account": self.service_account,
            "serial": self.serial,
            "not_after": self.not_after,
            "command": self.command,
            "encrypted_link": self.encrypted_link,
        }


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _account(name: str | None) -> _Account:
    """The service account the server will run as; refused when it does not exist, or when
    this user may not give files to it."""
    if name is None:
        entry = pwd.getpwuid(os.geteuid())
        return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(
            f"the service account {name!r} does not exist; nothing was written",
            fix=f"create it first (useradd --system {name}) or pass an existing account to "
            "--service-account",
        ) from None
    if entry.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise UsageError(
            f"cannot make files for the service account {name!r}: only root can give a "
            "file to another user; nothing was written",
            fix=f"run watchkeep join as root, or as {name}",
        )
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _fetch_ca(token: EnrollmentToken) -> tuple[x509.Certificate, str, bool]:
    """The site CA by the token's fingerprint, the management server's address that served
    it and whether it speaks TLS there."""
    failures = []
    for address in token.ms_addresses:
        where = f"[{address}]" if ":" in address else address
        for tls in (token.ms_tls, not token.ms_tls):
            url = f"{'https' if tls else 'http'}://{where}:{token.ms_port}"
            try:
                return fetch_ca_by_fingerprint(url, token.ca_fingerprint), address, tls
            except TrustError as exc:
                raise TrustError(
                    f"{exc.describe()}; the token was not sent",
                    fix=exc.fix,
                ) from None
            except ConnectionFailed as exc:
                failures.append(exc.describe())
    raise ConnectionFailed(
        f"the management server {token.ms_host} "
        f"({', '.join(token.ms_addresses)} port {token.ms_port})",
        "unreachable: " + "; ".join(failures[-2:]),
        fix=f"check that it runs and that this machine reaches {token.ms_addresses[0]} port "
        f"{token.ms_port}, then run the same watchkeep join again; nothing was written",
    )


def _local_address(remote: str, port: int) -> str:
    """The address of this machine that the management server is reached from (no packet
    is sent: connecting a UDP socket only picks the route)."""
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((remote, port))
        return str(probe.getsockname()[0])


def _csr(key: Any, host: str, ips: tuple[str, ...]) -> x509.CertificateSigningRequest:
    import ipaddress

    names: list[x509.GeneralName] = [x509.DNSName(host)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )


def _check_answer(
    answer: dict[str, Any], key: Any, ca: x509.Certificate, token: EnrollmentToken
) -> x509.Certificate:
    """The certificate the management server answered, if it is the one asked for: for this
    key, signed by the CA of the token's fingerprint, for exactly the token's names."""
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        cert.verify_directly_issued_by(ca)
    except (KeyError, ValueError, TypeError, InvalidSignature) as exc:
        raise TrustError(
            f"the management server answered a certificate that the site CA did not sign "
            f"({type(exc).__name__}); nothing was written",
            fix="ask the administrator to check the management server, then join again",
        ) from None
    names = (set(san_dns_names(cert)), {str(a) for a in san_ip_addresses(cert)})
    if not same_public_key(cert.public_key(), key.public_key()) or names != (
        {token.host},
        set(token.ips),
    ):
        raise TrustError(
            "the management server answered a certificate for another key or other names; "
            "nothing was written",
            fix="ask the administrator to check the management server, then join again",
        )
    return cert


async def _send(
    token: EnrollmentToken,
    address: str,
    tls: bool,
    ca: x509.Certificate,
    csr: x509.CertificateSigningRequest,
) -> dict[str, Any]:
    endpoint = Endpoint(token.ms_host, token.ms_host, address, token.ms_port, tls)
    context = None
    if tls:
        context = ssl.create_default_context(
            cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
        )
        context.hostname_checks_common_name = False
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    async with open_session({token.ms_host: address}, timeout=15) as session:
        answer = await call_json(
            session,
            endpoint,
            "POST",
            "/api/v1/join",
            ssl_context=context,
            body=join_request(token, csr),
        )
    if not isinstance(answer, dict):
        raise ConnectionFailed(str(endpoint), "it answered no join")
    return answer


def server_document(
    token: EnrollmentToken, address: str, account: str, chain: str, key: str
) -> dict[str, dict[str, Any]]:
    """The ``server.toml`` of a server that joined: complete, paths relative to it."""
    return {
        "server": {
            "name": token.name,
            "role": token.role.value,
            "host": token.host,
            "address": address,
            "data_dir": "data",
            "service_account": account,
            "tls_policy": TlsPolicy.INTERMEDIATE.value,
        },
        "ports": dict(DEFAULT_PORTS[token.role]),
        "tls": {"certificate": f"tls/{chain}", "key": f"tls/{key}", "trust_store": "trust"},
        "management": {
            "host": token.ms_host,
            "address": token.ms_addresses[0],
            "port": token.ms_port,
        },
    }


def _lay_out_servers_dir(home: Home, account: _Account) -> list[Path]:
    """HOME/servers/, made reachable by the service account (key.service_account): a new
    home for another account is made 0755, an existing one that blocks it is refused. The
    directories it made, deepest first (a join that fails removes them again)."""
    from watchkeep._access import Account, blocked_for

    other = account.uid != os.geteuid()
    made = [d for d in (home.servers_dir, *home.servers_dir.parents) if not d.exists()]
    for directory in reversed(made):
        private = directory in (home.root, home.servers_dir) and not other
        directory.mkdir(mode=0o700 if private else 0o755)
    found = Account.named(account.name)
    blocked = blocked_for(home.servers_dir, found) if found is not None and other else None
    if blocked is not None:
        _remove_empty(made)
        raise HomeError(
            f"the service account {account.name} could not reach its files in "
            f"{home.servers_dir}: {blocked.reason}; nothing was written",
            fix="join into a home the account can reach, e.g. --home /var/lib/watchkeep (or "
            f"chmod o+x {blocked.path})",
        )
    return made


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _give(directory: Path, account: _Account) -> None:
    """Everything below ``directory`` (itself included) to the service account."""
    if (account.uid, account.gid) == (os.geteuid(), os.getegid()):
        return
    for root, dirs, files in os.walk(directory):
        os.chown(root, account.uid, account.gid)
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, account.uid, account.gid, follow_symlinks=False)


def join_site(
    token_text: str,
    home: Home,
    service_account: str | None = None,
    *,
    key_type: KeyType = KeyType.RSA_2048,
    now: dt.datetime | None = None,
) -> Joined:
    """Join the site the token names; see the module's docstring for the order of steps."""
    from watchkeep.localsite._config import dumps_toml
    from watchkeep.servers._renewal import install_trust_payload

    token = EnrollmentToken.decode(token_text)
    account = _account(service_account)
    now = now or utcnow()
    if token.expires_at <= now:
        raise UsageError(
            f"the enrollment token for {token.name} expired at "
            f"{token.expires_at:%Y-%m-%dT%H:%M:%SZ}; nothing was sent or written",
            fix=f"ask the administrator for a new one: watchkeep enroll create --name "
            f"{token.name} --role {token.role.value} --host {token.host}",
        )
    target = home.server_dir(token.name)
    if target.exists():
        raise HomeError(
            f"{target} exists: a server named {token.name} is laid out in this home already; "
            "nothing was sent or written",
            fix=f"join into another --home, or remove {target} if that server is gone",
        )
    ca, ms_address, tls = _fetch_ca(token)
    address = token.ips[0] if token.ips else _local_address(ms_address, token.ms_port)
    made = _lay_out_servers_dir(home, account)
    for stale in home.servers_dir.glob(f".{token.name}.join-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{token.name}.join-", dir=home.servers_dir))
    try:
        owner = (account.uid, account.gid)
        name = certificate_name(Role(token.role.value), token.host)
        key = generate_key(key_type)
        atomic_write(staging / "tls" / f"{name}.key", private_key_pem(key), mode=0o600, owner=owner)
        csr = _csr(key, token.host, token.ips)
        answer = asyncio.run(_send(token, ms_address, tls, ca, csr))
        cert = _check_answer(answer, key, ca, token)
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
            serialization.Encoding.PEM
        )
        atomic_write(staging / "tls" / f"{name}.chain.pem", chain, mode=0o644, owner=owner)
        DirectoryTrustStore(staging / "trust").install(ca)
        trust = answer.get("trust")
        if isinstance(trust, dict):
            # New CAs only from a verified TLS answer; CRLs are signed and checked anyway.
            install_trust_payload(staging / "trust", trust, log_as=token.name, authenticated=tls)
        (staging / "data").mkdir(mode=0o700)
        document = server_document(token, address, account.name, f"{name}.chain.pem", f"{name}.key")
        atomic_write(staging / "server.toml", dumps_toml(document).encode(), mode=0o644)
        _give(staging, account)
        staging.chmod(0o700)
        staging.rename(target)
        fsync_directory(home.servers_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        raise
    config = target / "server.toml"
    run = f"watchkeep server run {token.role.program} --config {config}"
    if account.uid != os.geteuid():
        run = f"runuser -u {account.name} -- {run}"
    return Joined(
        name=token.name,
        role=token.role.value,
        host=token.host,
        address=address,
        directory=target,
        config=config,
        service_account=account.name,
        serial=str(answer.get("serial", "")),
        not_after=str(answer.get("not_after", "")),
        command=run,
        encrypted_link=tls,
    )
