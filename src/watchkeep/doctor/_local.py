"""Reading what is on this host: server configs (those laid out in the home,
``Home.server_configs``, and those named), their certificate chains, key files and trust
stores, this home's CA and trust store. Nothing here judges; it only reads."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._access import Account, blocked_for, other_readers
from watchkeep.doctor._snapshot import KeyFileFacts, LocalServerFacts, TrustStoreFacts
from watchkeep.errors import WatchkeepError

__all__ = [
    "read_ca",
    "read_crl",
    "read_local_servers",
    "read_trust_store",
    "service_account_of",
]


def read_trust_store(party: str, directory: Path) -> TrustStoreFacts:
    if not directory.is_dir():
        return TrustStoreFacts(party, directory, error="the directory does not exist")
    cas: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    try:
        for path in sorted(directory.glob("watchkeep-*.pem")):
            cas += x509.load_pem_x509_certificates(path.read_bytes())
        for path in sorted(p for p in directory.iterdir() if p.suffix.startswith(".r")):
            crls.append(x509.load_pem_x509_crl(path.read_bytes()))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).split("\n")[0]
        return TrustStoreFacts(party, directory, error=reason or str(exc))
    return TrustStoreFacts(party, directory, tuple(cas), tuple(crls))


def read_ca(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def read_crl(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def service_account_of(configured: str | None, data_dir: Path) -> str:
    """Who runs a server: the config's service_account; else, as the servers assume
    (watchkeep.pki.check_key_file_access), whoever runs it, which is the owner of the data
    directory it made at its first start; else (never started) the doctor's own account."""
    if configured:
        return configured
    try:
        return _account(data_dir.stat().st_uid)
    except OSError:
        return _account(os.geteuid())


def _key_facts(path: Path | None, account: str, leaf: x509.Certificate | None) -> KeyFileFacts:
    if path is None:
        return KeyFileFacts(
            Path("-"), account, error="the config names a certificate but no [tls] key"
        )
    try:
        st = path.stat()
    except OSError as exc:
        return KeyFileFacts(path, account, error=exc.strerror or str(exc))
    if not stat.S_ISREG(st.st_mode):
        return KeyFileFacts(path, account, error="it is not a regular file")
    account_entry = Account.named(account)
    unreachable = None
    if account_entry is not None:
        try:
            unreachable = blocked_for(path, account_entry)
        except OSError as exc:
            return KeyFileFacts(path, account, error=exc.strerror or str(exc))
    matches = None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if leaf is not None:
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            der = serialization.Encoding.DER
            matches = key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(
                der, spki
            )
    except (OSError, ValueError, TypeError):
        matches = None  # unreadable for the doctor (another account's key): not judged
    return KeyFileFacts(
        path,
        account,
        owner=_account(st.st_uid),
        mode=stat.S_IMODE(st.st_mode),
        matches_certificate=matches,
        account_exists=account_entry is not None,
        unreachable=unreachable,
        readers=tuple(other_readers(st, account_entry)) if account_entry is not None else (),
    )


def read_local_servers(
    paths: Iterable[Path],
) -> tuple[list[LocalServerFacts], list[tuple[Path, str]]]:
    """Each config's server and its files; the configs that do not load, with why."""
    from watchkeep.servers import load_config

    found: list[LocalServerFacts] = []
    errors: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            config = load_config(path)
        except WatchkeepError as exc:
            errors.append((path, str(exc)))
            continue
        chain: tuple[x509.Certificate, ...] = ()
        chain_error = None
        key = None
        if config.certificate is not None:
            try:
                chain = tuple(x509.load_pem_x509_certificates(config.certificate.read_bytes()))
            except OSError as exc:
                chain_error = exc.strerror or str(exc)
            except ValueError as exc:
                chain_error = str(exc).split("\n")[0]
            key = _key_facts(
                config.key,
                service_account_of(config.service_account, config.data_dir),
                chain[0] if chain else None,
            )
        trust = (
            read_trust_store(config.name, config.trust_store)
            if config.trust_store is not None
            else None
        )
        found.append(
            LocalServerFacts(
                config=path,
                name=config.name,
                role=config.role,
                host=config.host,
                address=config.address,
                ports=dict(config.ports),
                chain_path=config.certificate,
                chain=chain,
                chain_error=chain_error,
                key=key,
                trust=trust,
            )
        )
    return found, errors
