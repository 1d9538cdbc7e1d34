"""What the doctor collected about a site, as plain data: the checks read nothing else.

A snapshot holds the management server's status document, what was read from the files
of the servers configured on this host (certificate chains, key files, trust stores), the
trust store of this home, and what each TLS listener served when the doctor connected to
it as a client would. Collection fills it (``watchkeep.doctor._collect``); tests build it
by hand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from watchkeep._access import Blocked
from watchkeep.pki import fingerprint
from watchkeep.site import CertificateStatus, RuleBreach, ServerRole

__all__ = [
    "DEFAULT_WARN_DAYS",
    "HOME_PARTY",
    "IssuedCertificate",
    "KeyFileFacts",
    "ListedServer",
    "LocalServerFacts",
    "ProbeResult",
    "SeenCertificate",
    "SiteSnapshot",
    "TrustStoreFacts",
]

DEFAULT_WARN_DAYS = (30, 14, 7)
# The party whose trust store is this home's (the command-line client's).
HOME_PARTY = "this home"


@dataclass(frozen=True)
class TrustStoreFacts:
    """The CA certificates and CRLs in one party's directory trust store."""

    party: str  # a server's name, or HOME_PARTY
    directory: Path
    cas: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    error: str | None = None  # why it could not be read

    def holds(self, ca: x509.Certificate) -> bool:
        return any(fingerprint(c) == fingerprint(ca) for c in self.cas)


@dataclass(frozen=True)
class KeyFileFacts:
    """A server's private key file as the file system shows it."""

    path: Path
    service_account: str  # the account that must own it: the one that runs the server
    owner: str | None = None  # the account that owns it (or its uid, as text)
    mode: int | None = None  # permission bits
    matches_certificate: bool | None = None  # None: the key could not be read
    error: str | None = None  # why it could not be examined
    account_exists: bool = True  # the service account exists on this host
    # Where the service account is stopped on its way to the key (a directory it may not
    # search, or the key it may not read), as the kernel would stop it; None: it gets there.
    unreachable: Blocked | None = None
    readers: tuple[str, ...] = ()  # who else the key's mode lets read it


@dataclass(frozen=True)
class LocalServerFacts:
    """A server configured on this host: its config and what its files hold."""

    config: Path
    name: str
    role: ServerRole
    host: str
    address: str
    ports: Mapping[str, int]
    chain_path: Path | None = None  # [tls] certificate: leaf first, then the CA
    chain: tuple[x509.Certificate, ...] = ()
    chain_error: str | None = None
    key: KeyFileFacts | None = None
    trust: TrustStoreFacts | None = None

    @property
    def has_certificate(self) -> bool:
        return self.chain_path is not None


@dataclass(frozen=True)
class ProbeResult:
    """One TLS listener, as the doctor saw it when connecting as a client."""

    server: str
    listener: str
    host: str
    address: str
    port: int
    chain: tuple[x509.Certificate, ...] = ()  # as served, leaf first, unverified
    version: str | None = None
    cipher: str | None = None
    plaintext: bool = False  # it answered a TLS client in plaintext
    error: str | None = None  # no TLS handshake: why
    # Handshakes that must fail but were accepted: "TLSv1 (ECDHE-RSA-AES128-SHA)", ...
    weak_accepted: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"the {self.listener} listener ({self.address}:{self.port})"


@dataclass(frozen=True)
class ListedServer:
    """A server as the management server's status document lists it."""

    name: str
    role: ServerRole
    host: str
    address: str
    ports: Mapping[str, int]
    encryption: bool
    encrypted_now: bool
    online: bool
    certificate: CertificateStatus | None
    problems: tuple[RuleBreach, ...]  # what its own checks of its files found
    last_seen: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ListedServer:
        cert = data.get("certificate")
        return cls(
            name=str(data["name"]),
            role=ServerRole(str(data["role"])),
            host=str(data["host"]),
            address=str(data["address"]),
            ports={str(k): int(v) for k, v in dict(data.get("ports") or {}).items()},
            encryption=bool(data.get("encryption")),
            encrypted_now=bool(data.get("encrypted_now")),
            online=bool(data.get("online")),
            certificate=CertificateStatus.from_json(dict(cert)) if cert else None,
            problems=tuple(RuleBreach.from_json(p) for p in data.get("problems") or ()),
            last_seen=data.get("last_seen"),
        )


@dataclass(frozen=True)
class SeenCertificate:
    """One server certificate and every place the doctor saw it (files, listeners)."""

    server: str
    role: ServerRole
    host: str
    leaf: x509.Certificate
    places: tuple[str, ...]
    local: LocalServerFacts | None

    @property
    def where(self) -> str:
        return " and ".join(self.places)


@dataclass(frozen=True)
class IssuedCertificate:
    """An active certificate of the CA's inventory (read on the CA's home): those of
    watchkeep's servers and those exported for machines watchkeep does not run (an event
    server, an integration, a PKCS#12 for a client)."""

    name: str  # its inventory name, ROLE-HOST
    role: str
    hosts: tuple[str, ...]
    serial: str
    sha256_fingerprint: str
    not_after: dt.datetime
    key_held: bool = True  # False: signed from a CSR, its key is on its own machine


@dataclass(frozen=True)
class SiteSnapshot:
    now: dt.datetime
    warn_days: tuple[int, ...] = DEFAULT_WARN_DAYS
    cli: str = "watchkeep"  # the command prefix fixes start with (with --home when given)
    site_cas: tuple[x509.Certificate, ...] = ()
    site_ca_file: Path | None = None  # where the site CA certificate is, when on this host
    crls: tuple[x509.CertificateRevocationList, ...] = ()  # the CA's own, newest first
    status: Mapping[str, Any] | None = None  # GET /api/v1/site/status, when it answered
    management: str | None = None  # the management server this home is connected to
    management_error: str | None = None  # why it did not answer
    management_fix: str = ""
    home_trust: TrustStoreFacts | None = None
    local: tuple[LocalServerFacts, ...] = ()
    config_errors: tuple[tuple[Path, str], ...] = ()  # configs that did not load
    probes: tuple[ProbeResult, ...] = ()
    issued: tuple[IssuedCertificate, ...] = ()  # the CA's inventory, on the CA's home

    # -- views the checks share ----------------------------------------------------------

    def listed(self) -> tuple[ListedServer, ...]:
        if self.status is None:
            return ()
        return tuple(ListedServer.from_json(s) for s in self.status.get("servers", ()))

    def listed_by_name(self) -> dict[str, ListedServer]:
        return {s.name: s for s in self.listed()}

    def local_by_name(self) -> dict[str, LocalServerFacts]:
        return {s.name: s for s in self.local}

    def management_server(self) -> ListedServer | None:
        return next((s for s in self.listed() if s.role is ServerRole.MANAGEMENT), None)

    def trust_stores(self) -> tuple[TrustStoreFacts, ...]:
        stores = [self.home_trust] if self.home_trust is not None else []
        stores += [s.trust for s in self.local if s.trust is not None]
        return tuple(stores)

    def server_names(self) -> list[str]:
        """Every server the doctor knows of: listed by the management server or local."""
        names = [s.name for s in self.listed()]
        return names + [s.name for s in self.local if s.name not in names]

    def role_of(self, name: str) -> ServerRole | None:
        listed = self.listed_by_name().get(name)
        if listed is not None:
            return listed.role
        local = self.local_by_name().get(name)
        return local.role if local is not None else None

    def host_of(self, name: str) -> str:
        local = self.local_by_name().get(name)
        if local is not None:
            return local.host
        listed = self.listed_by_name().get(name)
        return listed.host if listed is not None else name

    def seen_certificates(self) -> list[SeenCertificate]:
        """Every server certificate seen in a file or on a listener, once per server."""
        order: list[tuple[str, str]] = []
        leaves: dict[tuple[str, str], x509.Certificate] = {}
        places: dict[tuple[str, str], list[str]] = {}

        def add(server: str, leaf: x509.Certificate, place: str) -> None:
            key = (server, fingerprint(leaf))
            if key not in leaves:
                order.append(key)
                leaves[key] = leaf
                places[key] = []
            if place not in places[key]:
                places[key].append(place)

        for local in self.local:
            if local.chain and local.chain_path is not None:
                add(local.name, local.chain[0], str(local.chain_path))
        for probe in self.probes:
            if probe.chain:
                add(probe.server, probe.chain[0], f"served on {probe.where}")
        local_by_name = self.local_by_name()
        seen = []
        for key in order:
            name = key[0]
            role = self.role_of(name)
            if role is None:
                continue
            seen.append(
                SeenCertificate(
                    server=name,
                    role=role,
                    host=self.host_of(name),
                    leaf=leaves[key],
                    places=tuple(places[key]),
                    local=local_by_name.get(name),
                )
            )
        return seen

    def unserved_issued(self) -> tuple[IssuedCertificate, ...]:
        """Inventory certificates the doctor saw in no server's files or listeners and no
        server reports: it has only the inventory to speak for them."""
        known = {fingerprint(s.leaf) for s in self.seen_certificates()}
        known |= {s.certificate.sha256_fingerprint for s in self.listed() if s.certificate}
        return tuple(c for c in self.issued if c.sha256_fingerprint not in known)

    def newest_crls(self) -> dict[str, x509.CertificateRevocationList]:
        """The newest CRL of each site CA (by CRL number) whose signature verifies, from
        the CA's own files and every trust store: site CA fingerprint -> CRL."""
        newest: dict[str, x509.CertificateRevocationList] = {}
        candidates = list(self.crls)
        for store in self.trust_stores():
            candidates += store.crls
        for ca in self.site_cas:
            for crl in candidates:
                if not crl_of(crl, ca):
                    continue
                current = newest.get(fingerprint(ca))
                if current is None or crl_number(crl) > crl_number(current):
                    newest[fingerprint(ca)] = crl
        return newest


def crl_of(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    """True when ``ca`` issued and signed ``crl``."""
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1
