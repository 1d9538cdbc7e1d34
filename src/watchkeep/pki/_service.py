"""Site PKI operations on disk: the CA files, issued certificates, the inventory, the CRL."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from watchkeep._access import Account, blocked_for
from watchkeep._clock import utcnow_to_second
from watchkeep._files import atomic_write, atomic_write_together, make_directory, resolve_owner
from watchkeep._home import Home
from watchkeep._names import validate_host_name
from watchkeep.errors import (
    CAAlreadyExists,
    CANotInitialised,
    CertificateNotFound,
    CertificateRuleViolation,
    DuplicateCertificate,
    InvalidChoice,
    MalformedPEM,
    OutputNotWritable,
    PKIError,
    UsageError,
)
from watchkeep.pki._authority import (
    CA_DEFAULT_DAYS,
    CertificateAuthority,
    LeafRequest,
    PublishedLocations,
    RevokedEntry,
    fingerprint,
    parse_publish_url,
    san_dns_names,
    san_ip_addresses,
)
from watchkeep.pki._keys import load_private_key, private_key_pem
from watchkeep.pki._profiles import KeyType, Role, generate_key, key_type_of, profile_for
from watchkeep.store import CertificateRecord, Inventory, open_database

__all__ = [
    "DEFAULT_SERVER_DAYS",
    "REVOCATION_REASONS",
    "SitePKI",
    "certificate_name",
    "load_certificate",
    "record_to_json",
]

DEFAULT_SERVER_DAYS = 90

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}


def certificate_name(role: Role, host: str) -> str:
    """The inventory name of a server certificate: stable across renewals."""
    return f"{role.value}-{host}"


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MalformedPEM(str(path), what, exc.strerror or str(exc)) from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise MalformedPEM(str(path), what, str(exc).split("\n")[0]) from exc


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def record_to_json(record: CertificateRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role,
        "hosts": list(record.hosts),
        "ips": list(record.ips),
        "serial": record.serial,
        "sha256_fingerprint": record.sha256_fingerprint,
        "key_type": record.key_type,
        "status": record.status,
        "not_before": _iso(record.not_before),
        "not_after": _iso(record.not_after),
        "days_left": round(record.days_left(now), 2),
        "cert_path": record.cert_path,
        "chain_path": record.chain_path,
        "key_path": record.key_path,
        "owner": record.owner,
        "issued_at": _iso(record.issued_at),
        "superseded_by": record.superseded_by,
        "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason,
    }


class SitePKI:
    """The certificate authority of one watchkeep home and its inventory.

    The CA key is loaded only when something must be signed, so read-only commands work
    without the passphrase.
    """

    def __init__(self, home: Home, *, passphrase: bytes | None = None) -> None:
        self.home = home
        self.passphrase = passphrase
        self._inventory: Inventory | None = None
        self._authority: CertificateAuthority | None = None

    # -- the CA ---------------------------------------------------------------------------

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            self.home.ensure()
            self._inventory = Inventory(open_database(self.home.database_url))
        return self._inventory

    def init_ca(
        self,
        name: str,
        *,
        key_type: KeyType = KeyType.RSA_3072,
        days: int = CA_DEFAULT_DAYS,
        now: dt.datetime | None = None,
        publish_url: str | None = None,
    ) -> CertificateAuthority:
        now = now or utcnow_to_second()
        canonical_url = parse_publish_url(publish_url) if publish_url is not None else None
        for existing in (self.home.ca_cert, self.home.ca_key, self.home.ca_dir):
            if existing.exists() and (existing.is_file() or any(existing.iterdir())):
                raise CAAlreadyExists(str(existing))
        ca = CertificateAuthority.create(name, key_type=key_type, days=days, now=now)
        self.home.ensure()
        # The CA directory is made aside and renamed into place, so an interrupted command
        # leaves either no CA or a whole one, never a key without its certificate (which
        # would also make `ca init` refuse to run again).
        try:
            staging = Path(tempfile.mkdtemp(prefix=".ca-", dir=self.home.root))
        except OSError as exc:
            raise OutputNotWritable(str(self.home.root), exc.strerror or str(exc)) from exc
        try:
            atomic_write(
                staging / self.home.ca_key.name, ca.private_key_pem(self.passphrase), mode=0o600
            )
            self._write_crl(ca, now, path=staging / self.home.crl.name)
            if canonical_url is not None:
                atomic_write(
                    staging / self.home.publish_url_file.name, canonical_url.encode() + b"\n"
                )
            atomic_write(
                staging / self.home.ca_cert.name,
                ca.certificate.public_bytes(serialization.Encoding.PEM),
                mode=0o644,
            )
            staging.rename(self.home.ca_dir)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputNotWritable(str(self.home.ca_dir), exc.strerror or str(exc)) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._authority = ca
        return ca

    # -- publication ----------------------------------------------------------------------

    def publish_url(self) -> str | None:
        """The base URL the management server publishes the CA and its CRL at, if set."""
        try:
            text = self.home.publish_url_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputNotWritable(
                str(self.home.publish_url_file), exc.strerror or str(exc)
            ) from exc
        return text or None

    def published(self) -> PublishedLocations | None:
        url = self.publish_url()
        return PublishedLocations(url) if url else None

    def set_publish_url(self, url: str) -> str:
        """Record where the CA and its CRL are published; certificates issued or renewed
        from now on carry these locations (those issued before keep none)."""
        self.ca_certificate()  # a home without a CA is refused
        canonical = parse_publish_url(url)
        with self._exclusive():
            atomic_write(self.home.publish_url_file, canonical.encode() + b"\n")
        return canonical

    def ca_certificate(self) -> x509.Certificate:
        if not self.home.ca_cert.exists():
            raise CANotInitialised(str(self.home.root))
        return load_certificate(self.home.ca_cert, "CA certificate")

    def authority(self) -> CertificateAuthority:
        if self._authority is None:
            cert = self.ca_certificate()
            key = load_private_key(self.home.ca_key, self.passphrase)
            self._authority = CertificateAuthority(cert, key)
        return self._authority

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the home's lock while certificates and the inventory change.

        Two `cert issue` runs for the same host must not both pass the duplicate check and
        write the same files. The lock is flock() on the home directory itself: it needs no
        lock file, and the kernel drops it when a process dies.
        """
        self.home.ensure()
        fd = os.open(self.home.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- issuing --------------------------------------------------------------------------

    def issue(
        self,
        role: Role,
        hosts: Sequence[str],
        *,
        ips: Sequence[str] = (),
        days: int = DEFAULT_SERVER_DAYS,
        key_type: KeyType = KeyType.RSA_2048,
        owner: str | None = None,
        out: Path | None = None,
        replace: bool = False,
        now: dt.datetime | None = None,
    ) -> CertificateRecord:
        """Issue a server certificate with a fresh key and record it in the inventory."""
        now = now or utcnow_to_second()
        request = self._leaf_request(role, hosts, ips, days)
        name = certificate_name(role, request.hosts[0])
        # The CA first: without it (or its passphrase) nothing may be written, not even
        # the inventory database that looking for duplicates would create.
        ca = self.authority()
        with self._exclusive():
            previous = self._refuse_duplicates(role, request.hosts, name, replace=replace)
            owner_ids = resolve_owner(owner)
            directory = out if out is not None else self.home.certs_dir
            if out is not None and owner_ids is not None:
                # The server's own directory: made for its account, or refused when an
                # existing one would keep the account from its key.
                _refuse_unreachable(out, str(owner))
            key = generate_key(key_type)
            cert = ca.sign_server_certificate(
                key.public_key(), request, now=now, published=self.published()
            )
            if out is not None and owner_ids is not None:
                make_directory(out, private=True, owner=owner_ids)
            return self._store(
                name,
                role,
                cert,
                key_pem=private_key_pem(key),
                directory=directory,
                owner=owner,
                owner_ids=owner_ids,
                supersede=[p.serial for p in previous],
                now=now,
            )

    def sign_csr(
        self,
        csr_path: Path,
        role: Role,
        *,
        days: int = DEFAULT_SERVER_DAYS,
        out: Path | None = None,
        replace: bool = False,
        now: dt.datetime | None = None,
    ) -> CertificateRecord:
        """Sign a server's CSR: its key never leaves the server."""
        now = now or utcnow_to_second()
        csr = _read_csr(csr_path)
        hosts, ips = _names_from_csr(csr)
        key_type_of(csr.public_key())  # refuse weak keys before signing anything
        request = self._leaf_request(role, hosts, ips, days)
        name = certificate_name(role, request.hosts[0])
        ca = self.authority()  # before the inventory is opened, as in issue()
        with self._exclusive():
            previous = self._refuse_duplicates(role, request.hosts, name, replace=replace)
            cert = ca.sign_server_certificate(
                csr.public_key(), request, now=now, published=self.published()
            )
            cert_path = out if out is not None else self.home.certs_dir / f"{name}.pem"
            return self._store(
                name,
                role,
                cert,
                key_pem=None,
                directory=cert_path.parent,
                cert_path=cert_path,
                owner=None,
                owner_ids=None,
                supersede=[p.serial for p in previous],
                now=now,
            )

    def renew(
        self, name_or_serial: str, *, days: int | None = None, now: dt.datetime | None = None
    ) -> CertificateRecord:
        """Re-issue a certificate with a new key and the same names, where it was installed.

        An expired certificate can be renewed too: a server that was switched off for months
        must come back with one command.
        """
        now = now or utcnow_to_second()
        with self._exclusive():
            record = self.find(name_or_serial)
            if record.status == "revoked":
                raise PKIError(
                    f"{record.name} (serial {record.serial}) is revoked; renewing would re-use "
                    "names an administrator withdrew",
                    fix=f"issue a new one: watchkeep cert issue --role {record.role} "
                    + " ".join(f"--host {h}" for h in record.hosts),
                )
            if record.key_path is None:
                raise PKIError(
                    f"{record.name} was signed from a CSR; its key is on the server",
                    fix=f"make a new CSR on the server and run: watchkeep cert sign-csr CSR --role {record.role} --replace",
                )
            lifetime = record.not_after - record.not_before
            request = self._leaf_request(
                Role.parse(record.role),
                record.hosts,
                record.ips,
                days if days is not None else max(1, round(lifetime.total_seconds() / 86400)),
            )
            owner_ids = resolve_owner(record.owner) if record.owner else None
            key = generate_key(KeyType.parse(record.key_type))
            cert = self.authority().sign_server_certificate(
                key.public_key(), request, now=now, published=self.published()
            )
            old = Path(record.cert_path)
            return self._store(
                record.name,
                Role.parse(record.role),
                cert,
                key_pem=private_key_pem(key),
                directory=old.parent,
                owner=record.owner,
                owner_ids=owner_ids,
                supersede=[record.serial],
                now=now,
                archive_previous=record,
            )

    def _leaf_request(
        self, role: Role, hosts: Sequence[str], ips: Sequence[str], days: int
    ) -> LeafRequest:
        canonical: list[str] = []
        for host in hosts:
            name = validate_host_name(host)
            if name not in canonical:
                canonical.append(name)
        addresses = []
        for text in ips:
            try:
                addresses.append(ipaddress.ip_address(str(text).strip()))
            except ValueError:
                raise UsageError(
                    f"invalid IP address {text!r}",
                    fix="pass an IPv4 or IPv6 address, e.g. --ip 127.0.0.2",
                ) from None
        return LeafRequest(
            profile_for(role), tuple(canonical), tuple(dict.fromkeys(addresses)), days
        )

    def _refuse_duplicates(
        self, role: Role, hosts: Sequence[str], name: str, *, replace: bool
    ) -> list[CertificateRecord]:
        clashes = [
            r for r in self.inventory.active() if r.role == role.value and set(r.hosts) & set(hosts)
        ]
        if clashes and not replace:
            first = clashes[0]
            host = next(h for h in hosts if h in first.hosts)
            raise DuplicateCertificate(first.name, host, role.value, first.serial)
        return clashes

    def _store(
        self,
        name: str,
        role: Role,
        cert: x509.Certificate,
        *,
        key_pem: bytes | None,
        directory: Path,
        owner: str | None,
        owner_ids: tuple[int, int] | None,
        supersede: Sequence[str],
        now: dt.datetime,
        cert_path: Path | None = None,
        archive_previous: CertificateRecord | None = None,
    ) -> CertificateRecord:
        ca = self.authority()
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM)
        cert_path = cert_path or directory / f"{name}.pem"
        chain_path = cert_path.with_name(cert_path.name.removesuffix(".pem") + ".chain.pem")
        key_path = directory / f"{name}.key" if key_pem is not None else None
        if archive_previous is not None:
            old = Path(archive_previous.cert_path)
            if old.exists():
                atomic_write(
                    self.home.certs_dir / "archive" / f"{archive_previous.serial}.pem",
                    old.read_bytes(),
                )
        # Written together (all staged and fsynced, then renamed back to back): a renewal cut
        # short leaves the new key beside the old certificate only if it dies between two
        # renames. The key goes first, so that a server that reloads when its certificate
        # changes finds the matching key in place.
        files: list[tuple[Path, bytes, int]] = []
        if key_path is not None and key_pem is not None:
            files.append((key_path, key_pem, 0o600))
        files += [(chain_path, cert_pem + ca_pem, 0o644), (cert_path, cert_pem, 0o644)]
        atomic_write_together(files, owner=owner_ids)
        record = CertificateRecord(
            serial=format(cert.serial_number, "x"),
            name=name,
            role=role.value,
            hosts=san_dns_names(cert),
            ips=san_ip_addresses(cert),
            key_type=key_type_of(cert.public_key()).value,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha256_fingerprint=fingerprint(cert),
            issuer_fingerprint=ca.fingerprint,
            status="active",
            issued_at=now,
            cert_path=str(cert_path.resolve()),
            chain_path=str(chain_path.resolve()),
            key_path=str(key_path.resolve()) if key_path else None,
            owner=owner,
        )
        self.inventory.add(record, supersede=supersede)
        return record

    # -- looking up -----------------------------------------------------------------------

    def _existing_inventory(self) -> Inventory:
        """The inventory of a home that has a CA: reading one that has none (a mistyped
        --home, say) is refused rather than answered with an empty list and a new home."""
        if not self.home.ca_cert.exists():
            raise CANotInitialised(str(self.home.root))
        return self.inventory

    def find(self, name_or_serial: str) -> CertificateRecord:
        record = self._existing_inventory().find(name_or_serial)
        if record is None:
            raise CertificateNotFound(name_or_serial, str(self.home.root))
        return record

    def certificates(
        self,
        *,
        include_history: bool = False,
        expiring_within: dt.timedelta | None = None,
        now: dt.datetime | None = None,
    ) -> list[CertificateRecord]:
        now = now or utcnow_to_second()
        inventory = self._existing_inventory()
        records = inventory.all() if include_history else inventory.active()
        if expiring_within is not None:
            records = [r for r in records if r.not_after - now <= expiring_within]
        return records

    # -- revocation -----------------------------------------------------------------------

    def revoke(
        self, name_or_serial: str, *, reason: str = "unspecified", now: dt.datetime | None = None
    ) -> CertificateRecord:
        now = now or utcnow_to_second()
        if reason not in REVOCATION_REASONS:
            raise InvalidChoice("revocation reason", reason, list(REVOCATION_REASONS))
        with self._exclusive():
            record = self.find(name_or_serial)
            if record.status == "revoked":
                raise PKIError(
                    f"{record.name} (serial {record.serial}) is already revoked",
                    fix="nothing to do; `watchkeep cert list --json` shows its status",
                )
            ca = self.authority()
            self.inventory.revoke(record.serial, when=now, reason=reason)
            self._write_crl(ca, now)
            return self.find(record.serial)

    def write_crl(self, now: dt.datetime | None = None, out: Path | None = None) -> Path:
        ca = self.authority()  # a home without a CA is refused before anything is made
        with self._exclusive():
            path = self._write_crl(ca, now or utcnow_to_second())
        if out is not None:
            atomic_write(out, path.read_bytes())
            return out
        return path

    def revoked_entries(self, issuer_fingerprint: str, now: dt.datetime) -> list[RevokedEntry]:
        """The CRL entries of the certificates the CA of ``issuer_fingerprint`` issued and
        that are revoked (a revocation without a recorded time is dated ``now``)."""
        return [
            RevokedEntry(
                int(r.serial, 16),
                r.revoked_at or now,
                REVOCATION_REASONS.get(r.revocation_reason or "", x509.ReasonFlags.unspecified),
            )
            for r in self.inventory.revoked()
            if r.issuer_fingerprint == issuer_fingerprint
        ]

    def _write_crl(
        self, ca: CertificateAuthority, now: dt.datetime, path: Path | None = None
    ) -> Path:
        entries = self.revoked_entries(ca.fingerprint, now)
        # CRL numbers must only grow; the time in milliseconds does that without a counter file.
        number = int(now.timestamp() * 1000)
        if self.home.crl.exists():
            try:
                old = x509.load_pem_x509_crl(self.home.crl.read_bytes())
                previous = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
                number = max(number, previous + 1)
            except (ValueError, x509.ExtensionNotFound):
                pass
        crl = ca.sign_crl(entries, now=now, number=number)
        target = path or self.home.crl
        atomic_write(target, crl.public_bytes(serialization.Encoding.PEM))
        return target

    # -- export ---------------------------------------------------------------------------

    def export_pkcs12(
        self, name_or_serial: str, out: Path, *, password: bytes | None
    ) -> CertificateRecord:
        record = self.find(name_or_serial)
        if record.key_path is None:
            raise PKIError(
                f"{record.name} was signed from a CSR; watchkeep does not hold its key",
                fix="export it on the server that made the CSR",
            )
        cert = load_certificate(Path(record.cert_path))
        key = load_private_key(Path(record.key_path))
        if password:
            encryption: serialization.KeySerializationEncryption = (
                serialization.PrivateFormat.PKCS12.encryption_builder()
                .kdf_rounds(100_000)
                .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                .hmac_hash(hashes.SHA256())
                .build(password)
            )
        else:
            encryption = serialization.NoEncryption()
        data = pkcs12.serialize_key_and_certificates(
            record.name.encode(), key, cert, [self.ca_certificate()], encryption
        )
        atomic_write(out, data, mode=0o600)
        return record

    # -- CA description -------------------------------------------------------------------

    def describe_ca(self, now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or utcnow_to_second()
        cert = self.ca_certificate()
        key = cert.public_key()
        published = self.published()
        return {
            "subject": cert.subject.rfc4514_string(),
            "name": cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "serial": format(cert.serial_number, "x"),
            "sha256_fingerprint": fingerprint(cert),
            "key_type": key_type_of(key).value,
            "not_before": _iso(cert.not_valid_before_utc),
            "not_after": _iso(cert.not_valid_after_utc),
            "days_left": round((cert.not_valid_after_utc - now).total_seconds() / 86400, 2),
            "cert_path": str(self.home.ca_cert.resolve()),
            "key_path": str(self.home.ca_key.resolve()),
            "crl_path": str(self.home.crl.resolve()),
            "publish_url": published.base_url if published else None,
            "crl_url": published.crl_url(cert) if published else None,
            "ca_url": published.ca_url(cert) if published else None,
            "key_encrypted": b"ENCRYPTED" in self.home.ca_key.read_bytes()
            if self.home.ca_key.exists()
            else None,
        }


def _read_csr(path: Path) -> x509.CertificateSigningRequest:
    """Load a CSR and check its signature; any damage is a MalformedPEM, never a traceback."""
    what = "certificate signing request"
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
        # cryptography parses the public key and the extensions lazily: a damaged CSR
        # loads, then fails here.
        signature_valid = csr.is_signature_valid
        csr.extensions  # noqa: B018
    except OSError as exc:
        raise MalformedPEM(str(path), what, exc.strerror or str(exc)) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedPEM(str(path), what, str(exc).split("\n")[0]) from exc
    if not signature_valid:
        raise MalformedPEM(str(path), what, "its signature does not verify")
    return csr


def _names_from_csr(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    hosts = list(san_dns_names(csr))
    ips = list(san_ip_addresses(csr))
    for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = str(attr.value)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if value.lower().rstrip(".") not in hosts:
                hosts.insert(0, value)
    if not hosts:
        raise CertificateRuleViolation(
            "cert.hostname",
            "CSR",
            "it names no host (no subject CN and no SAN DNS name)",
            fix="make the CSR with -subj /CN=HOST -addext subjectAltName=DNS:HOST",
        )
    return hosts, ips


def _refuse_unreachable(directory: Path, owner: str) -> None:
    """key.service_account before anything is written: the owner given to `cert issue`
    must be able to reach the directory its key goes into (a directory that does not exist
    yet is made for it)."""
    account = Account.named(owner)
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if account is None:
        return  # resolve_owner has refused an unknown account already
    try:
        blocked = blocked_for(existing, account)
    except OSError:
        return  # what cannot be examined is left to the write, which names it
    if blocked is None:
        return
    fix = (
        f"chown {owner} {blocked.path} && chmod 700 {blocked.path}"
        if blocked.path == directory.absolute()
        else f"chmod o+x {blocked.path}"
    )
    raise CertificateRuleViolation(
        "key.service_account",
        str(directory),
        f"the owner {owner} could not reach its key in {directory}: {blocked.reason}",
        fix=fix,
    )
