"""Checks of the site as a whole: the encryption rules between servers, failover
preparation, plaintext logins, and whether the doctor could see everything."""

from __future__ import annotations

from collections.abc import Iterator

from watchkeep.doctor._checks_cert import issues_for
from watchkeep.doctor._checks_trust import trust_installed
from watchkeep.doctor._helpers import run_command
from watchkeep.doctor._model import Issue, Severity, check
from watchkeep.doctor._snapshot import HOME_PARTY, SiteSnapshot
from watchkeep.site import ServerRole

__all__ = [
    "site_failover_prepared",
    "site_ms_plaintext_login",
    "site_ms_requires_all_rs",
    "site_offline",
    "site_reachable",
]


@check(
    "site.ms_requires_all_rs",
    Severity.ERROR,
    summary="""MS encryption on => encryption on every RS, including failover RSs.""",
    requirement="""If you enable encryption on the management server, you must also enable
    encryption on all of the recording servers. Before you enable encryption, you must
    install security certificates on the management server and all recording servers.""",
)
def site_ms_requires_all_rs(snapshot: SiteSnapshot) -> Iterator[Issue]:
    ms = snapshot.management_server()
    if ms is None or not ms.encryption:
        return
    listed = snapshot.listed_by_name()
    for name in snapshot.server_names():
        role = snapshot.role_of(name)
        if role is None or not role.records:
            continue
        reasons = []
        fixes = []
        server = listed.get(name)
        local = snapshot.local_by_name().get(name)
        if server is not None and not server.encryption:
            reasons.append("its encryption is off")
            fixes.append(f"{snapshot.cli} encryption enable --server {name}")
        if local is not None and not local.has_certificate:
            reasons.append(
                f"its config {local.config} names no certificate, so it cannot be encrypted "
                "and the management server refuses it"
            )
            directory = local.config.parent / "tls"
            stem = f"{role.value}-{local.host}"
            fixes.insert(
                0,
                f"{snapshot.cli} cert issue --role {role.value} --host {local.host} --out "
                f"{directory}, then set [tls] certificate = {directory / f'{stem}.chain.pem'} "
                f"and key = {directory / f'{stem}.key'} in {local.config}",
            )
        elif server is None and local is not None:
            reasons.append("the management server does not list it (its registration is refused)")
            fixes.append(f"read the log of {name}")
        if reasons:
            yield Issue(
                name,
                f"the management server's encryption is on, but on this {role.value} server "
                + "; ".join(reasons),
                "; ".join(fixes),
            )


@check(
    "site.failover_prepared",
    Severity.ERROR,
    summary="""When RS encryption is on, every failover RS has its own valid certificate for
    its own host name and is trusted by the same parties.""",
    requirement="""If you enable encryption on the recording servers and your system applies
    failover recording servers, [it is recommended] that you also prepare the failover
    recording servers for encryption.""",
)
def site_failover_prepared(snapshot: SiteSnapshot) -> Iterator[Issue]:
    encrypted = [
        s.name for s in snapshot.listed() if s.role is ServerRole.RECORDING and s.encryption
    ]
    if not encrypted:
        return
    listed = snapshot.listed_by_name()
    local_by_name = snapshot.local_by_name()
    covers = f"encrypted recording server(s) {', '.join(encrypted)}"
    for name in snapshot.server_names():
        if snapshot.role_of(name) is not ServerRole.FAILOVER:
            continue
        local = local_by_name.get(name)
        server = listed.get(name)
        has_certificate = (
            local.has_certificate
            if local is not None
            else server is not None and server.certificate is not None
        )
        host = snapshot.host_of(name)
        if not has_certificate:
            where = (
                f"its config {local.config} names none" if local is not None else "it reports none"
            )
            yield Issue(
                name,
                f"this failover server has no certificate of its own ({where}), so it cannot "
                f"take over for the {covers} without dropping their encryption",
                f"{snapshot.cli} cert issue --role failover --host {host} --out DIR, then set "
                f"[tls] certificate, key and trust_store in "
                f"{local.config if local is not None else 'its config'}",
            )
            continue
        problems = issues_for(snapshot, name)
        problems += [i for i in trust_installed.run(snapshot) if i.server == name]
        if problems:
            yield Issue(
                name,
                f"this failover server is not prepared to take over for the {covers}: "
                + "; ".join(p.message for p in problems),
                problems[0].fix,
            )


@check(
    "site.ms_plaintext_login",
    Severity.ERROR,
    summary="""client -> MS (login, management API) is encrypted when MS encryption is on;
    with it off, passwords cross the network in clear: doctor reports an error.""",
    requirement="""In HTTPS, the communication protocol is encrypted using Transport Layer
    Security (TLS). With management server encryption off, the logins of every client cross
    the network in clear [a watchkeep rule].""",
)
def site_ms_plaintext_login(snapshot: SiteSnapshot) -> Iterator[Issue]:
    ms = snapshot.management_server()
    if ms is None or ms.encryption:
        return
    first = [
        f"{snapshot.cli} encryption enable --server {s.name}"
        for s in snapshot.listed()
        if s.role.records and not s.encryption
    ]
    yield Issue(
        ms.name,
        "the management server's encryption is off: every login (this one too) sends its "
        "user's password across the network in clear, and the management link to the "
        "recording servers is not protected",
        " && ".join([*first, f"{snapshot.cli} encryption enable --server {ms.name}"]),
    )


@check(
    "site.reachable",
    Severity.ERROR,
    summary="""The doctor can check the live site: the management server answers this
    home's login, every online server's TLS listeners take a connection, every server
    config on this host loads, and at least one server is checked.""",
    requirement="""Run against the live site (through the MS API and by connecting to every
    server as its clients would) and against the local files of the servers on this host
    [a watchkeep rule].""",
)
def site_reachable(snapshot: SiteSnapshot) -> Iterator[Issue]:
    if snapshot.management_error is not None:
        name = snapshot.management or "management server"
        yield Issue(
            name,
            f"the management server does not answer this home, so the live site was not "
            f"checked: {snapshot.management_error}",
            snapshot.management_fix or f"{snapshot.cli} site status",
        )
    for path, error in snapshot.config_errors:
        yield Issue(str(path), f"the server config does not load: {error}", f"fix {path}")
    if not (snapshot.management_error or snapshot.config_errors) and not (
        snapshot.listed() or snapshot.local or snapshot.probes
    ):
        # Zero findings about zero servers must not read as a healthy site.
        yield Issue(
            HOME_PARTY,
            "nothing was checked: no management server listed a server to this home and no "
            "server config on this host names one",
            f"connect this home to the site ({snapshot.cli} site connect --host MS_HOST "
            "--address MS_ADDRESS --password-file FILE), or pass each server's config with "
            "--server-config FILE",
        )
    listed = snapshot.listed_by_name()
    for probe in snapshot.probes:
        server = listed.get(probe.server)
        if probe.error is None or probe.plaintext or server is None or not server.online:
            # An offline server's listeners are expected to be down (site.offline); one
            # that answers in plaintext has no certificate to serve (cert.chain).
            continue
        yield Issue(
            probe.server,
            f"{probe.where} of {probe.server} does not complete a TLS handshake: {probe.error}",
            f"check that {probe.server} runs and listens on {probe.address}:{probe.port}",
        )


@check(
    "site.offline",
    Severity.INFO,
    summary="""Every server the management server lists is online, so that the doctor checks
    it as its clients would.""",
    requirement="""Run against the live site, by connecting to every server as its clients
    would [a watchkeep rule]: a server that is not heard from is reported, never skipped in
    silence.""",
)
def site_offline(snapshot: SiteSnapshot) -> Iterator[Issue]:
    local = snapshot.local_by_name()
    for server in snapshot.listed():
        if server.online:
            continue
        since = f"since {server.last_seen}" if server.last_seen else "ever"
        yield Issue(
            server.name,
            f"the management server has not heard from {server.name} {since}",
            f"start it on its host: {run_command(server.role, local.get(server.name))}",
        )
