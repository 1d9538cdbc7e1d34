"""Hand-made snapshots for the pure tests of the checks: a healthy site, and small edits
that break it in one way each.

Certificates are real, signed in memory by a site CA (ECDSA P-256 keys are made in
microseconds), so that the checks verify chains, names and CRLs exactly as they do on a
live site. Time is fixed: NOW, with the CA made a year before.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from watchkeep.doctor import (
    KeyFileFacts,
    LocalServerFacts,
    ProbeResult,
    SiteSnapshot,
    TrustStoreFacts,
)
from watchkeep.pki import (
    CertificateAuthority,
    KeyType,
    LeafRequest,
    Role,
    generate_key,
    profile_for,
)
from watchkeep.site import DEFAULT_PORTS, ServerRole

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
DOMAIN = "site.test"
ACCOUNT = "watchkeep"

CA = CertificateAuthority.create(
    "Doctor Test CA", key_type=KeyType.ECDSA_P256, now=NOW - dt.timedelta(days=365)
)
OTHER_CA = CertificateAuthority.create(
    "Some Other CA", key_type=KeyType.ECDSA_P256, now=NOW - dt.timedelta(days=365)
)


def crl(
    revoked: Sequence[x509.Certificate] = (),
    *,
    number: int = 1,
    now: dt.datetime = NOW - dt.timedelta(days=1),
    ca: CertificateAuthority = CA,
) -> x509.CertificateRevocationList:
    from watchkeep.pki._authority import RevokedEntry

    entries = [RevokedEntry(c.serial_number, now, x509.ReasonFlags.unspecified) for c in revoked]
    return ca.sign_crl(entries, now=now, number=number)


CRL = crl()


def host(name: str) -> str:
    return f"{name}.{DOMAIN}"


def leaf(
    role: ServerRole | Role,
    hosts: Sequence[str],
    *,
    days: int = 90,
    issued: dt.datetime = NOW - dt.timedelta(days=10),
    ca: CertificateAuthority = CA,
) -> x509.Certificate:
    """A certificate exactly as watchkeep issues it."""
    request = LeafRequest(
        profile_for(Role(role.value)),
        tuple(hosts),
        (ipaddress.ip_address("127.0.0.2"),),
        days,
    )
    return ca.sign_server_certificate(
        generate_key(KeyType.ECDSA_P256).public_key(), request, now=issued
    )


def odd_leaf(
    hosts: Sequence[str],
    *,
    # Both, as every server's certificate has: each case is odd in one respect only
    usages: Sequence[x509.ObjectIdentifier] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    is_ca: bool = False,
    common_name: str | None = None,
    key: Any = None,
) -> x509.Certificate:
    """A certificate watchkeep would never issue (wrong purpose, a CA, odd names, odd key)."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or hosts[0])]))
        .issuer_name(CA.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(NOW + dt.timedelta(days=80))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
        )
    )
    return builder.sign(CA.key, hashes.SHA256())


@dataclass(frozen=True)
class Srv:
    name: str
    role: ServerRole
    address: str

    @property
    def host(self) -> str:
        return host(self.name)

    @property
    def ports(self) -> dict[str, int]:
        return dict(DEFAULT_PORTS[self.role])

    @property
    def directory(self) -> Path:
        return Path("/srv/watchkeep") / self.name


SERVERS = {
    "ms": Srv("ms", ServerRole.MANAGEMENT, "127.0.0.2"),
    "rs1": Srv("rs1", ServerRole.RECORDING, "127.0.0.3"),
    "fo1": Srv("fo1", ServerRole.FAILOVER, "127.0.0.4"),
    "mob": Srv("mob", ServerRole.MOBILE, "127.0.0.5"),
}
LEAVES = {name: leaf(s.role, [s.host]) for name, s in SERVERS.items()}


def certificate_json(cert: x509.Certificate) -> dict[str, Any]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": round((cert.not_valid_after_utc - NOW).total_seconds() / 86400, 2),
        "hosts": san.get_values_for_type(x509.DNSName),
    }


def server_json(
    name: str,
    *,
    encryption: bool = True,
    online: bool = True,
    certificate: x509.Certificate | None = None,
    problems: Sequence[tuple[str, str, str]] = (),
    no_certificate: bool = False,
) -> dict[str, Any]:
    """A server as GET /api/v1/site/status lists it."""
    s = SERVERS[name] if name in SERVERS else Srv(name, ServerRole.RECORDING, "127.0.0.9")
    cert = None if no_certificate else (certificate or LEAVES.get(name))
    return {
        "name": s.name,
        "role": s.role.value,
        "host": s.host,
        "address": s.address,
        "ports": s.ports,
        "encryption": encryption,
        "encrypted_now": encryption,
        "online": online,
        "last_seen": "2030-06-01T11:59:59Z",
        "covering": None,
        "certificate": certificate_json(cert) if cert is not None else None,
        "problems": [{"code": c, "message": m, "fix": f} for c, m, f in problems],
    }


def status(*servers: dict[str, Any]) -> dict[str, Any]:
    return {
        "servers": list(servers),
        "cameras": [],
        "site_ca_sha256_fingerprint": CA.fingerprint,
    }


def trust(
    party: str,
    directory: Path,
    *,
    cas: Sequence[x509.Certificate] = (CA.certificate,),
    crls: Sequence[x509.CertificateRevocationList] = (CRL,),
) -> TrustStoreFacts:
    return TrustStoreFacts(party, directory, tuple(cas), tuple(crls))


def local(
    name: str,
    *,
    chain: Sequence[x509.Certificate] | None = None,
    no_certificate: bool = False,
    key: KeyFileFacts | None = None,
    trust_store: TrustStoreFacts | None = None,
    no_trust_store: bool = False,
) -> LocalServerFacts:
    """A server configured on this host, laid out as LocalSite lays it out."""
    s = SERVERS[name] if name in SERVERS else Srv(name, ServerRole.RECORDING, "127.0.0.9")
    tls = s.directory / "tls"
    stem = f"{s.role.value}-{s.host}"
    if no_certificate:
        chain_path = None
        chain_certs: tuple[x509.Certificate, ...] = ()
        key_facts = None
    else:
        chain_path = tls / f"{stem}.chain.pem"
        chain_certs = tuple(chain) if chain is not None else (LEAVES[name], CA.certificate)
        key_facts = key or KeyFileFacts(
            tls / f"{stem}.key", ACCOUNT, owner=ACCOUNT, mode=0o600, matches_certificate=True
        )
    return LocalServerFacts(
        config=s.directory / "server.toml",
        name=s.name,
        role=s.role,
        host=s.host,
        address=s.address,
        ports=s.ports,
        chain_path=chain_path,
        chain=chain_certs,
        key=key_facts,
        trust=None if no_trust_store else (trust_store or trust(s.name, s.directory / "trust")),
    )


def probe(
    name: str,
    listener: str,
    *,
    chain: Sequence[x509.Certificate] | None = None,
    **changes: Any,
) -> ProbeResult:
    s = SERVERS[name]
    return ProbeResult(
        server=s.name,
        listener=listener,
        host=s.host,
        address=s.address,
        port=s.ports[listener],
        chain=tuple(chain) if chain is not None else (LEAVES[name], CA.certificate),
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        **changes,
    )


HOME_TRUST = trust("this home", Path("/home/admin/.watchkeep/trust"))


def healthy() -> SiteSnapshot:
    """A site encrypted everywhere, every rule kept: the doctor finds nothing."""
    return SiteSnapshot(
        now=NOW,
        cli="watchkeep",
        site_cas=(CA.certificate,),
        site_ca_file=Path("/home/admin/.watchkeep/ca/ca.pem"),
        crls=(CRL,),
        status=status(*(server_json(n) for n in SERVERS)),
        management="ms",
        home_trust=HOME_TRUST,
        local=tuple(local(n) for n in SERVERS),
        probes=(
            probe("ms", "api"),
            probe("rs1", "data"),
            probe("rs1", "control"),
            probe("fo1", "data"),
            probe("fo1", "control"),
            probe("mob", "https"),
        ),
    )


def with_local(snapshot: SiteSnapshot, facts: LocalServerFacts) -> SiteSnapshot:
    """Replace (or add) one server's local facts."""
    others = tuple(s for s in snapshot.local if s.name != facts.name)
    return replace(snapshot, local=(*others, facts))


def without_local(snapshot: SiteSnapshot, name: str) -> SiteSnapshot:
    return replace(snapshot, local=tuple(s for s in snapshot.local if s.name != name))


def with_listed(snapshot: SiteSnapshot, entry: dict[str, Any]) -> SiteSnapshot:
    """Replace (or add) one server in the status document."""
    assert snapshot.status is not None
    servers = [s for s in snapshot.status["servers"] if s["name"] != entry["name"]]
    return replace(snapshot, status={**snapshot.status, "servers": [*servers, entry]})


def with_probes(snapshot: SiteSnapshot, *probes: ProbeResult) -> SiteSnapshot:
    """Replace the probes of the listeners named in ``probes``."""
    named = {(p.server, p.listener) for p in probes}
    kept = tuple(p for p in snapshot.probes if (p.server, p.listener) not in named)
    return replace(snapshot, probes=(*kept, *probes))


def without_probes(snapshot: SiteSnapshot, name: str) -> SiteSnapshot:
    return replace(snapshot, probes=tuple(p for p in snapshot.probes if p.server != name))


def with_trust_crls(
    snapshot: SiteSnapshot, crls: Sequence[x509.CertificateRevocationList]
) -> SiteSnapshot:
    """Every trust store on this host holding ``crls`` (as after `trust install`)."""
    home = replace(snapshot.home_trust, crls=tuple(crls)) if snapshot.home_trust else None
    local_facts = tuple(
        replace(s, trust=replace(s.trust, crls=tuple(crls))) if s.trust else s
        for s in snapshot.local
    )
    return replace(snapshot, home_trust=home, local=local_facts)
