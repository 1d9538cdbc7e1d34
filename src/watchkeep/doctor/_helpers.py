"""What several checks share: reading certificates, relaying what servers report about
themselves, and writing fixes that can be pasted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from watchkeep.doctor._model import Issue
from watchkeep.doctor._snapshot import LocalServerFacts, SiteSnapshot
from watchkeep.pki import fingerprint, san_dns_names
from watchkeep.site import ServerRole

__all__ = [
    "common_names",
    "copy_ca_fix",
    "date",
    "dns_names",
    "fingerprint_prefix",
    "issuing_ca",
    "reissue_fix",
    "relayed",
    "renew_fix",
    "run_command",
    "trust_install_fix",
]


def dns_names(cert: x509.Certificate) -> list[str]:
    return [n.lower() for n in san_dns_names(cert)]


def common_names(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def issuing_ca(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The CA among ``cas`` whose key signed ``cert`` (the site has no intermediates)."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def date(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def relayed(snapshot: SiteSnapshot, code: str) -> Iterator[Issue]:
    """Problems a server found in its own files and reported to the management server,
    for servers whose files are not on this host (local files are read afresh instead).

    A server without any certificate reports only that; the site rules judge whether it
    needs one (site.ms_requires_all_rs, site.failover_prepared).
    """
    local = snapshot.local_by_name()
    for server in snapshot.listed():
        if server.name in local or server.certificate is None:
            continue
        for problem in server.problems:
            if problem.code == code:
                yield Issue(
                    server.name,
                    f"{server.name} reports about its own files: {problem.message}",
                    problem.fix or f"see the log of {server.name}",
                )


def reissue_fix(
    snapshot: SiteSnapshot,
    server: str,
    role: ServerRole,
    host: str,
    local: LocalServerFacts | None,
    *,
    options: str = "",
) -> str:
    """Issue the server a new certificate where its config expects it."""
    base = f"{snapshot.cli} cert issue --role {role.value} --host {host}{options}"
    if local is None or local.chain_path is None:
        return (
            f"{base} --replace, then install the new chain and key on {server} "
            "(its config's [tls] certificate and key)"
        )
    directory = local.chain_path.parent
    name = f"{role.value}-{host}"
    fix = f"{base} --out {directory} --replace"
    key_path = local.key.path if local.key is not None else None
    if local.chain_path != directory / f"{name}.chain.pem" or key_path != directory / f"{name}.key":
        fix += (
            f", then set [tls] certificate = {directory / f'{name}.chain.pem'} and key = "
            f"{directory / f'{name}.key'} in {local.config}"
        )
    return fix


def renew_fix(snapshot: SiteSnapshot, role: ServerRole, host: str) -> str:
    """Renew by inventory name: the same names, a new key, written where it was."""
    return f"{snapshot.cli} cert renew {role.value}-{host}"


def trust_install_fix(snapshot: SiteSnapshot, directory: object) -> str:
    """Put the site CA (and, from the CA's home, its CRL) into a trust store, with a command
    that works on the host where the doctor printed it."""
    if snapshot.site_ca_file is not None:
        # Without a CA_PEM argument `trust install` takes this home's CA and its CRL.
        return f"{snapshot.cli} trust install --store {directory}"
    return copy_ca_fix(snapshot, f"--store {directory}")


def copy_ca_fix(snapshot: SiteSnapshot, where: str) -> str:
    """On a host without the CA's home: fetch the CA's certificate from the management
    server, checked by its fingerprint, or bring its file here; then trust it."""
    named = (snapshot.status or {}).get("site_ca_sha256_fingerprint")
    if not named and snapshot.site_cas:
        named = fingerprint(snapshot.site_cas[0])
    check = f", which must be {named}" if named else ""
    ms = snapshot.management_server()
    url = (
        f"{'https' if ms.encryption else 'http'}://{ms.host}:{ms.ports.get('api', 9000)}"
        if ms is not None
        else "https://MS_HOST:9000"
    )
    return (
        f"fetch it from the management server, checked by the SHA-256 fingerprint that "
        f"`watchkeep ca show` prints on the CA's home{check}: {snapshot.cli} trust install "
        f"--from {url} --fingerprint {named or 'HEX'} {where}".rstrip()
        + "; or copy the site CA certificate to this host (on the CA's home, `watchkeep ca "
        "show` prints its path and SHA-256 fingerprint) and run: "
        f"{snapshot.cli} trust install CA_PEM {where}"
    )


def run_command(role: ServerRole, local: LocalServerFacts | None) -> str:
    process = "recording" if role.records else role.value
    config = local.config if local is not None else "FILE"
    return f"watchkeep server run {process} --config {config}"


def fingerprint_prefix(cert: x509.Certificate) -> str:
    return fingerprint(cert)[:16]
