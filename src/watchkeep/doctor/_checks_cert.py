"""Checks of the server certificates themselves: names, purpose, chain, validity, expiry,
lifetime, revocation. Each sees every certificate once per server, wherever it was found
(a server's files, a listener), and, for servers whose files are elsewhere, what the
management server reports about them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from watchkeep.doctor._helpers import (
    common_names,
    date,
    dns_names,
    fingerprint_prefix,
    issuing_ca,
    reissue_fix,
    relayed,
    renew_fix,
    trust_install_fix,
)
from watchkeep.doctor._model import Issue, Severity, check
from watchkeep.doctor._snapshot import (
    IssuedCertificate,
    SiteSnapshot,
    crl_number,
    crl_of,
)
from watchkeep.pki import fingerprint, profile_for
from watchkeep.site import CertificateStatus, ServerRole

__all__ = [
    "cert_chain",
    "cert_expiry_warning",
    "cert_hostname",
    "cert_lifetime",
    "cert_revoked",
    "cert_server_auth",
    "cert_validity",
]

# Mozilla's intermediate profile allows certificates of at most 366 days; watchkeep
# back-dates notBefore by an hour for clock skew, which is not lifetime asked for.
MAX_LIFETIME = dt.timedelta(days=366, hours=1)
SITE_CA = "site CA"


def _unseen_listed(
    snapshot: SiteSnapshot,
) -> Iterator[tuple[str, ServerRole, str, CertificateStatus]]:
    """Listed servers with a reported certificate that the doctor did not see itself."""
    seen = {s.server for s in snapshot.seen_certificates()}
    for server in snapshot.listed():
        if server.name not in seen and server.certificate is not None:
            yield server.name, server.role, server.host, server.certificate


def _issued_fix(snapshot: SiteSnapshot, issued: IssuedCertificate) -> str:
    """Renew an inventory certificate; watchkeep runs nothing with it, so whoever uses it
    must be given the new files."""
    if not issued.key_held:
        return (
            f"make a new CSR where its key is and run: {snapshot.cli} cert sign-csr CSR "
            f"--role {issued.role} --replace, then install the new certificate there"
        )
    return (
        f"{snapshot.cli} cert renew {issued.name}, then install the new files where it is "
        f"used (or export them: {snapshot.cli} cert export {issued.name} --pkcs12 FILE)"
    )


@check(
    "cert.hostname",
    Severity.ERROR,
    summary="""A server certificate names the server's host name as subject CN and in the
    SAN DNS names (IP SANs where addressed by IP).""",
    requirement="""Issued to the recording server so that the recording server's host name
    is included in the certificate, either as subject (owner) or in the list of DNS names
    that the certificate is issued to.""",
)
def cert_hostname(snapshot: SiteSnapshot) -> Iterator[Issue]:
    for seen in snapshot.seen_certificates():
        names = dns_names(seen.leaf)
        fix = reissue_fix(snapshot, seen.server, seen.role, seen.host, seen.local)
        if seen.host.lower() not in names:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} names {', '.join(names) or 'no host'}, not "
                f"the server's host {seen.host}: every client refuses it",
                fix,
            )
            continue
        stray = [cn for cn in common_names(seen.leaf) if cn.lower() not in names]
        if stray:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} has the subject CN {stray[0]}, which is not "
                "one of its DNS names",
                fix,
            )
    for name, role, host, cert in _unseen_listed(snapshot):
        hosts = [h.lower() for h in cert.hosts]
        if host.lower() not in hosts:
            yield Issue(
                name,
                f"the certificate it reports names {', '.join(hosts) or 'no host'}, not its "
                f"host {host}",
                reissue_fix(snapshot, name, role, host, None),
            )
    yield from relayed(snapshot, "cert.hostname")


def _dials_out(role: ServerRole) -> bool:
    # Whether the server presents its certificate as a client too (mutual TLS on the
    # management link): what its role's certificate profile says.
    return profile_for(role).client_auth


@check(
    "cert.server_auth",
    Severity.ERROR,
    summary="""Issued for server authentication (EKU serverAuth; clientAuth too for every
    server that dials the management link with it: MS, RS, failover, mobile). Not a CA.""",
    requirement="""The CA certificate is used to issue private server authentication
    certificates to the recording servers.""",
)
def cert_server_auth(snapshot: SiteSnapshot) -> Iterator[Issue]:
    for seen in snapshot.seen_certificates():
        fix = reissue_fix(snapshot, seen.server, seen.role, seen.host, seen.local)
        try:
            is_ca = seen.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} is a CA certificate, not a server certificate",
                fix,
            )
        try:
            usages = list(seen.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = []
        missing = []
        if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            missing.append("server authentication (serverAuth)")
        if _dials_out(seen.role) and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            missing.append(
                "client authentication (clientAuth), which a "
                f"{seen.role.value} server needs on the mutual-TLS management link"
            )
        if missing:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} is not issued for {' nor '.join(missing)}",
                fix,
            )
    yield from relayed(snapshot, "cert.server_auth")


@check(
    "cert.chain",
    Severity.ERROR,
    summary="""Chains to the site CA; the chain served by the server is complete.""",
    requirement="""Whenever a service client calls the web service, the web service sends
    the server certificate, including the public key, to the client. The service client can
    validate the server certificate using the already installed public CA certificate.""",
)
def cert_chain(snapshot: SiteSnapshot) -> Iterator[Issue]:
    cas = snapshot.site_cas
    for seen in snapshot.seen_certificates():
        if cas and issuing_ca(seen.leaf, cas) is None:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} is not issued by the site CA "
                f"({', '.join(c.subject.rfc4514_string() for c in cas)}) but by "
                f"{seen.leaf.issuer.rfc4514_string()}: no party of the site trusts it",
                reissue_fix(snapshot, seen.server, seen.role, seen.host, seen.local),
            )
    ca_file = snapshot.site_ca_file
    for local in snapshot.local:
        if local.chain_path is None:
            continue
        fix = reissue_fix(snapshot, local.name, local.role, local.host, local)
        if local.chain_error is not None or not local.chain:
            yield Issue(
                local.name,
                f"{local.chain_path} (the [tls] certificate of {local.config}) is not a "
                f"certificate chain: {local.chain_error or 'it holds no certificate'}",
                fix,
            )
            continue
        ca = issuing_ca(local.chain[0], cas)
        if ca is not None and not any(fingerprint(c) == fingerprint(ca) for c in local.chain[1:]):
            yield Issue(
                local.name,
                f"{local.chain_path} holds the server certificate without the site CA "
                f"after it, so {local.name} serves an incomplete chain",
                f"cat {ca_file} >> {local.chain_path}" if ca_file is not None else fix,
            )
        if local.key is not None and local.key.matches_certificate is False:
            yield Issue(
                local.name,
                f"the key {local.key.path} does not belong to the certificate in "
                f"{local.chain_path}",
                fix,
            )
    local_by_name = snapshot.local_by_name()
    for probe in snapshot.probes:
        owner = local_by_name.get(probe.server)
        if probe.plaintext:
            role = snapshot.role_of(probe.server) or ServerRole.RECORDING
            yield Issue(
                probe.server,
                f"{probe.server}'s encryption is on, but {probe.where} answers TLS clients in "
                "plaintext: it has no certificate to serve",
                reissue_fix(snapshot, probe.server, role, probe.host, owner)
                + ", and set [tls] certificate, key and trust_store in its config",
            )
            continue
        if not probe.chain:
            continue
        ca = issuing_ca(probe.chain[0], cas)
        if ca is not None and not any(fingerprint(c) == fingerprint(ca) for c in probe.chain[1:]):
            fix = (
                f"cat {ca_file} >> {owner.chain_path} (the server reloads it by itself)"
                if owner is not None and owner.chain_path is not None and ca_file is not None
                else f"put the site CA certificate after the server certificate in the [tls] "
                f"certificate file of {probe.server}"
            )
            yield Issue(
                probe.server,
                f"{probe.where} serves an incomplete chain: its own certificate without the "
                "site CA",
                fix,
            )
    yield from relayed(snapshot, "cert.chain")


@check(
    "cert.validity",
    Severity.ERROR,
    summary="""Not expired, not yet-to-come. An expired certificate makes every peer refuse
    the server.""",
    requirement="""If a certificate expires: the clients will no longer trust the recording
    server with the expired certificate and thus cannot communicate with it.""",
)
def cert_validity(snapshot: SiteSnapshot) -> Iterator[Issue]:
    now = snapshot.now
    for ca in snapshot.site_cas:
        if ca.not_valid_after_utc < now:
            yield Issue(
                SITE_CA,
                f"the site CA certificate {ca.subject.rfc4514_string()} expired on "
                f"{date(ca.not_valid_after_utc)}: no certificate of the site verifies",
                "create a new CA (watchkeep --home NEW_HOME ca init --name NAME), install it in "
                "every trust store and re-issue every server certificate from it",
            )
    for seen in snapshot.seen_certificates():
        if seen.leaf.not_valid_after_utc < now:
            days = (now - seen.leaf.not_valid_after_utc).total_seconds() / 86400
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} expired on "
                f"{date(seen.leaf.not_valid_after_utc)} ({days:.0f} days ago): every peer "
                f"refuses {seen.server}",
                renew_fix(snapshot, seen.role, seen.host),
            )
        elif seen.leaf.not_valid_before_utc > now:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} is not valid until "
                f"{date(seen.leaf.not_valid_before_utc)}: is this host's clock right?",
                "check the clocks of this host and the CA's host (timedatectl), or re-issue: "
                + reissue_fix(snapshot, seen.server, seen.role, seen.host, seen.local),
            )
    for issued in snapshot.unserved_issued():
        if issued.not_after < now:
            yield Issue(
                issued.name,
                f"the certificate {issued.name} (serial {issued.serial}, "
                f"{', '.join(issued.hosts)}) that the CA issued expired on "
                f"{date(issued.not_after)}: whatever uses it is refused by every peer",
                _issued_fix(snapshot, issued),
            )
    for name, role, host, cert in _unseen_listed(snapshot):
        if cert.not_after < now:
            yield Issue(
                name,
                f"the certificate it reports expired on {date(cert.not_after)}: every peer "
                f"refuses {name}",
                renew_fix(snapshot, role, host),
            )
    yield from relayed(snapshot, "cert.validity")


@check(
    "cert.expiry_warning",
    Severity.WARNING,
    summary="""Warn at 30, 14 and 7 days before expiry (configurable), in the CLI, the MS
    status API, logs and metrics.""",
    requirement="""Certificates have an expiry date. [The specification's VMS] will not warn
    you when a certificate is about to expire.""",
)
def cert_expiry_warning(snapshot: SiteSnapshot) -> Iterator[Issue]:
    # The servers' own warnings use the same rule (imported here: the PKI package pulls in
    # the database layer, which `doctor --list-checks` does not need).
    from watchkeep.pki._lifecycle import warning_level

    now = snapshot.now

    def warn(not_after: dt.datetime) -> tuple[float, int] | None:
        level = warning_level(not_after, now, snapshot.warn_days)
        if not level:
            return None  # outside every threshold, or expired (cert.validity says so)
        return (not_after - now).total_seconds() / 86400, level

    for ca in snapshot.site_cas:
        hit = warn(ca.not_valid_after_utc)
        if hit is not None:
            yield Issue(
                SITE_CA,
                f"the site CA certificate {ca.subject.rfc4514_string()} expires on "
                f"{date(ca.not_valid_after_utc)}, in {hit[0]:.1f} days (the {hit[1]}-day "
                "warning): every server certificate stops verifying then",
                "create a new CA, install it beside the old one in every trust store, and "
                "re-issue every server certificate from it before then",
            )
    for seen in snapshot.seen_certificates():
        hit = warn(seen.leaf.not_valid_after_utc)
        if hit is not None:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} expires on "
                f"{date(seen.leaf.not_valid_after_utc)}, in {hit[0]:.1f} days (the "
                f"{hit[1]}-day warning)",
                renew_fix(snapshot, seen.role, seen.host),
            )
    for issued in snapshot.unserved_issued():
        hit = warn(issued.not_after)
        if hit is not None:
            yield Issue(
                issued.name,
                f"the certificate {issued.name} (serial {issued.serial}, "
                f"{', '.join(issued.hosts)}) that the CA issued expires on "
                f"{date(issued.not_after)}, in {hit[0]:.1f} days (the {hit[1]}-day warning)",
                _issued_fix(snapshot, issued),
            )
    for name, role, host, cert in _unseen_listed(snapshot):
        hit = warn(cert.not_after)
        if hit is not None:
            yield Issue(
                name,
                f"the certificate it reports expires on {date(cert.not_after)}, in {hit[0]:.1f} "
                f"days (the {hit[1]}-day warning)",
                renew_fix(snapshot, role, host),
            )
    yield from _renewals_failing(snapshot)


def _renewals_failing(snapshot: SiteSnapshot) -> Iterator[Issue]:
    """Each server renews its own certificate and reports how that goes in its heartbeats:
    a renewal that keeps failing is a certificate on its way to expiry."""
    for server in (snapshot.status or {}).get("servers", ()):
        renewal = server.get("renewal") or {}
        name = str(server.get("name"))
        if renewal.get("rejoin"):
            yield Issue(
                name,
                f"its certificate can no longer renew itself: {renewal.get('last_error')}",
                str(renewal["rejoin"]),
            )
        elif renewal.get("failures"):
            yield Issue(
                name,
                f"renewing its certificate failed {renewal['failures']} time(s) (due "
                f"{renewal.get('next_renewal_at')}, next attempt {renewal.get('retry_at')}, "
                f"the certificate in use expires {renewal.get('not_after')}): "
                f"{renewal.get('last_error')}",
                f"let {name} reach the management server (its log says why it cannot); it "
                "retries by itself",
            )


@check(
    "cert.lifetime",
    Severity.WARNING,
    summary="""Server certificates live 90 days by default; `--days` may ask for more, and
    doctor warns above 366 (Mozilla's intermediate profile allows at most 366).""",
    requirement="""Server certificates 90 days by default (Mozilla's recommended lifespan;
    its intermediate profile allows at most 366 and modern at most 90) [a watchkeep rule].""",
)
def cert_lifetime(snapshot: SiteSnapshot) -> Iterator[Issue]:
    for seen in snapshot.seen_certificates():
        lifetime = seen.leaf.not_valid_after_utc - seen.leaf.not_valid_before_utc
        if lifetime > MAX_LIFETIME:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} lives {lifetime.days} days; at most 366 are "
                "allowed (90 recommended): a stolen key stays useful that long",
                renew_fix(snapshot, seen.role, seen.host) + " --days 90",
            )


def _revoked_serials(crl: x509.CertificateRevocationList) -> dict[int, x509.RevokedCertificate]:
    return {entry.serial_number: entry for entry in crl}


@check(
    "cert.revoked",
    Severity.ERROR,
    summary="""A revoked certificate is refused by every watchkeep peer (CRL).""",
    requirement="""A revoked certificate is refused by every watchkeep peer (CRL)
    [a watchkeep rule; the specification does not cover revocation].""",
)
def cert_revoked(snapshot: SiteSnapshot) -> Iterator[Issue]:
    newest = snapshot.newest_crls()
    for seen in snapshot.seen_certificates():
        ca = issuing_ca(seen.leaf, snapshot.site_cas)
        crl = newest.get(fingerprint(ca)) if ca is not None else None
        entry = (
            crl.get_revoked_certificate_by_serial_number(seen.leaf.serial_number) if crl else None
        )
        if entry is not None:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} (serial {seen.leaf.serial_number:x}) was "
                f"revoked on {date(entry.revocation_date_utc)} but is still installed",
                reissue_fix(snapshot, seen.server, seen.role, seen.host, seen.local),
            )
    for store in snapshot.trust_stores():
        for ca in snapshot.site_cas:
            current = newest.get(fingerprint(ca))
            held = sorted((c for c in store.crls if crl_of(c, ca)), key=crl_number, reverse=True)
            fix = trust_install_fix(snapshot, store.directory)
            party = store.party
            if (
                held
                and held[0].next_update_utc is not None
                and held[0].next_update_utc < snapshot.now
            ):
                yield Issue(
                    store.party,
                    f"the CRL in the trust store {store.directory} of {party} expired on "
                    f"{date(held[0].next_update_utc)}: {party} refuses every certificate of "
                    "the site",
                    f"{snapshot.cli} ca crl && {fix}",
                )
                continue
            if current is None:
                continue
            revoked = _revoked_serials(current)
            if not held:
                if revoked:
                    yield Issue(
                        store.party,
                        f"the trust store {store.directory} of {party} has no CRL of the site "
                        f"CA ({fingerprint_prefix(ca)}), so {party} accepts the "
                        f"{len(revoked)} revoked certificate(s)",
                        fix,
                    )
                continue
            missing = sorted(set(revoked) - set(_revoked_serials(held[0])))
            if missing:
                yield Issue(
                    store.party,
                    f"the CRL in the trust store {store.directory} of {party} is out of date: "
                    f"it does not list serial(s) {', '.join(f'{s:x}' for s in missing)}, "
                    f"which {party} therefore still accepts",
                    fix,
                )
    yield from relayed(snapshot, "cert.revoked")


def issues_for(snapshot: SiteSnapshot, server: str) -> list[Issue]:
    """Every certificate error of one server (for site.failover_prepared)."""
    found = []
    for chk in (cert_hostname, cert_server_auth, cert_chain, cert_validity, cert_revoked):
        found += [i for i in chk.run(snapshot) if i.server == server]
    return found
