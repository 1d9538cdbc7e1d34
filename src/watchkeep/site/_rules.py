"""The site's encryption and failover rules, as pure functions over the site model."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from watchkeep.site._model import Camera, RuleBreach, Server, ServerRole

__all__ = [
    "FailoverMove",
    "encryption_blockers",
    "identity_change",
    "plan_failover",
    "registration_blocker",
    "site_breaches",
    "visible_servers",
]


def _readiness_blockers(server: Server, ca_fingerprint: str | None) -> list[RuleBreach]:
    code_for_role = (
        "site.failover_prepared" if server.role is ServerRole.FAILOVER else "trust.installed"
    )
    if not server.online or server.readiness is None:
        return [
            RuleBreach(
                code=code_for_role if server.role is ServerRole.FAILOVER else "cert.validity",
                server=server.name,
                message=(
                    "the server is offline, so its certificate and trust store cannot be checked"
                ),
                fix=f"start it: watchkeep server run {server.role.value} --config FILE",
            )
        ]
    found: list[RuleBreach] = []
    ready = server.readiness
    for problem in ready.problems:
        code = problem.code
        if server.role is ServerRole.FAILOVER and (
            code.startswith("cert.") or code == "trust.installed"
        ):
            code = "site.failover_prepared"
        blocker = replace(problem, code=code, server=server.name)
        if blocker not in found:
            found.append(blocker)
    if ready.certificate is None and not ready.problems:
        found.append(
            RuleBreach(
                code=code_for_role if server.role is ServerRole.FAILOVER else "cert.chain",
                server=server.name,
                message="no certificate is installed",
                fix=f"watchkeep cert issue --role {server.role.value} --host {server.host} "
                "--out DIR, and set [tls] in its config",
            )
        )
    if ca_fingerprint and ca_fingerprint not in ready.trusted_ca_fingerprints:
        found.append(
            RuleBreach(
                code=code_for_role,
                server=server.name,
                message="its trust store does not hold the site CA",
                fix="watchkeep trust install --store DIR (the server's [tls] trust_store)",
            )
        )
    return found


def encryption_blockers(
    target: Server,
    enable: bool,
    servers: Sequence[Server],
    *,
    ca_fingerprint: str | None,
) -> list[RuleBreach]:
    """Everything that stops turning ``target``'s encryption on (or off); empty means go.

    site.ms_requires_all_rs: the management server's encryption needs every recording and
    failover server encrypted first, and no recording server may drop its encryption while
    the management server's is on. trust.installed / site.failover_prepared: a server (and
    the failover servers standing by for recording servers) must hold a valid certificate
    and trust the site CA before its encryption is turned on.
    """
    blockers: list[RuleBreach] = []
    recorders = [s for s in servers if s.role.records]
    management = next((s for s in servers if s.role is ServerRole.MANAGEMENT), None)
    if enable:
        blockers += _readiness_blockers(target, ca_fingerprint)
        if target.role is ServerRole.MANAGEMENT:
            for rs in recorders:
                if not rs.encryption:
                    blockers.append(
                        RuleBreach(
                            code="site.ms_requires_all_rs",
                            server=rs.name,
                            message=f"encryption is off on this {rs.role.value} server; "
                            "management server encryption needs every recording server encrypted",
                            fix=f"watchkeep encryption enable --server {rs.name}",
                        )
                    )
            for rs in recorders:
                blockers += [
                    b for b in _readiness_blockers(rs, ca_fingerprint) if b not in blockers
                ]
        if target.role is ServerRole.RECORDING:
            for fo in (s for s in servers if s.role is ServerRole.FAILOVER):
                blockers += [
                    b
                    for b in _readiness_blockers(fo, ca_fingerprint)
                    if b.code in ("site.failover_prepared", "trust.installed")
                ]
    elif target.role.records and management is not None and management.encryption:
        blockers.append(
            RuleBreach(
                code="site.ms_requires_all_rs",
                server=target.name,
                message="the management server's encryption is on, so this recording server "
                "must stay encrypted",
                fix=f"first: watchkeep encryption disable --server {management.name}",
            )
        )
    return blockers


def site_breaches(
    servers: Sequence[Server],
    *,
    ca_fingerprint: str | None,
    now: dt.datetime,
    warn_days: Sequence[int],
) -> list[RuleBreach]:
    """The rules the running site breaks now, as an administrator must hear of them.

    site.ms_requires_all_rs: the management server encrypted while a recording or failover
    server is not. site.failover_prepared: a failover server that could not take over an
    encrypted recording server's cameras. cert.validity / cert.expiry_warning: a server's
    certificate expired, or inside the first (largest) warning threshold.
    """
    found: list[RuleBreach] = []
    management = next((s for s in servers if s.role is ServerRole.MANAGEMENT), None)
    recorders = [s for s in servers if s.role.records]
    if management is not None and management.encryption:
        found += [
            RuleBreach(
                code="site.ms_requires_all_rs",
                server=rs.name,
                message=f"the management server is encrypted but this {rs.role.value} "
                "server is not: the link between them is refused",
                fix=f"watchkeep encryption enable --server {rs.name}",
            )
            for rs in recorders
            if not rs.encryption
        ]
    if any(s.encryption for s in recorders if s.role is ServerRole.RECORDING):
        for fo in (s for s in servers if s.role is ServerRole.FAILOVER):
            found += [
                b
                for b in _readiness_blockers(fo, ca_fingerprint)
                if b.code == "site.failover_prepared" and b not in found
            ]
    warn_from = dt.timedelta(days=max(warn_days, default=0))
    for server in servers:
        cert = server.readiness.certificate if server.readiness else None
        if cert is None:
            continue
        left = cert.not_after - now
        if left <= dt.timedelta(0):
            found.append(
                RuleBreach(
                    code="cert.validity",
                    server=server.name,
                    message=f"its certificate expired on {cert.not_after:%Y-%m-%d %H:%M} UTC: "
                    "every peer refuses it",
                    fix=f"watchkeep cert renew {server.role.value}-{server.host}",
                )
            )
        elif left <= warn_from:
            found.append(
                RuleBreach(
                    code="cert.expiry_warning",
                    server=server.name,
                    message=f"its certificate expires in {left / dt.timedelta(days=1):.0f} "
                    f"day(s), on "
                    f"{cert.not_after:%Y-%m-%d} UTC",
                    fix=f"watchkeep cert renew {server.role.value}-{server.host}",
                )
            )
    return found


def registration_blocker(server: Server, management: Server) -> RuleBreach | None:
    """Why ``server`` (as its heartbeat describes it) may not join the site now, if it may
    not. site.ms_requires_all_rs: while the management server is encrypted, a recording or
    failover server joins only if it can be encrypted itself (it is then encrypted at once)."""
    if not (management.encryption and server.role.records):
        return None
    readiness = server.readiness
    if readiness is not None and readiness.ready:
        return None
    problems = "; ".join(
        f"[{p.code}] {p.message}" for p in (readiness.problems if readiness else ())
    )
    return RuleBreach(
        code="site.ms_requires_all_rs",
        server=server.name,
        message="management server encryption is on, so every recording server must be "
        f"encrypted, but {server.name} cannot be: {problems or 'no certificate'}",
        fix=f"give {server.name} a valid certificate and the site CA, or first: watchkeep "
        f"encryption disable --server {management.name}",
    )


def identity_change(
    claimed: Server, existing: Server | None, servers: Sequence[Server]
) -> RuleBreach | None:
    """Why a heartbeat describing ``claimed`` may not speak for it, if it may not: a
    registered server keeps its role, host and address (an administrator moves it), and a
    new server may not take a host another one is registered with."""
    name = claimed.name
    if existing is not None:
        if claimed.role is not existing.role:
            return RuleBreach(
                code="auth.registration",
                server=name,
                message=f"{name} is registered as a {existing.role.value} server; a heartbeat "
                f"cannot make it a {claimed.role.value} server",
                fix=f"give the new server a name of its own, or an administrator removes {name} "
                "from the site first",
            )
        if (claimed.host, claimed.address) != (existing.host, existing.address):
            return RuleBreach(
                code="auth.registration",
                server=name,
                message=f"{name} is registered as {existing.host} at {existing.address}; a "
                f"heartbeat cannot move it to {claimed.host} at {claimed.address}",
                fix=f"if {name} really moved, an administrator says so: watchkeep server update "
                f"{name} --host HOST --address ADDRESS",
            )
        return None
    other = next((s for s in servers if s.host == claimed.host and s.name != name), None)
    if other is not None:
        return RuleBreach(
            code="auth.registration",
            server=name,
            message=f"{claimed.host} is the host of {other.name}; {name} cannot register with it",
            fix=f"give {name} a host of its own, or stop {other.name} and let an administrator "
            "remove it first",
        )
    return None


def visible_servers(
    servers: Sequence[Server],
    cameras: Sequence[Camera],
    *,
    administrator: bool,
    allowed: str | Collection[str],
) -> list[Server]:
    """The servers a user may know of: every one for an administrator; for an operator the
    management server and the servers that record the cameras it may view (``allowed``:
    camera names, or "*")."""
    if administrator:
        return list(servers)
    may_view = {c.served_by for c in cameras if allowed == "*" or c.name in allowed}
    return [s for s in servers if s.role is ServerRole.MANAGEMENT or s.name in may_view]


@dataclass(frozen=True)
class FailoverMove:
    camera: str
    to_server: str
    reason: str


def plan_failover(
    servers: Sequence[Server],
    cameras: Sequence[Camera],
    *,
    now: dt.datetime,
    timeout: dt.timedelta,
) -> tuple[list[FailoverMove], dict[str, str | None]]:
    """Decide where each camera records now.

    A recording server silent for longer than ``timeout`` hands its cameras to a free,
    online failover server (cold standby: one failover server covers one recording server
    at a time, taken in name order); when it is heard again, its cameras go back.
    Returns the camera moves and the new ``covering`` of every failover server.
    """

    def alive(s: Server) -> bool:
        return s.online and s.last_seen is not None and now - s.last_seen <= timeout

    by_name = {s.name: s for s in servers}
    failovers = sorted((s for s in servers if s.role is ServerRole.FAILOVER), key=lambda s: s.name)
    covering: dict[str, str | None] = {f.name: f.covering for f in failovers}
    # A failover server that died, or whose recording server is back, stops covering.
    for fo in failovers:
        target = covering[fo.name]
        if target is None:
            continue
        if not alive(fo) or (target in by_name and alive(by_name[target])):
            covering[fo.name] = None
    for rs in sorted((s for s in servers if s.role is ServerRole.RECORDING), key=lambda s: s.name):
        if alive(rs) or rs.name in covering.values():
            continue
        if not any(c.recording_server == rs.name for c in cameras):
            continue
        free = next((f for f in failovers if alive(f) and covering[f.name] is None), None)
        if free is not None:
            covering[free.name] = rs.name
    covered = {target: fo for fo, target in covering.items() if target is not None}
    moves = []
    for cam in cameras:
        want = covered.get(cam.recording_server, cam.recording_server)
        if cam.served_by != want:
            reason = (
                f"{cam.recording_server} is offline; {want} takes over"
                if want != cam.recording_server
                else f"{cam.recording_server} is back"
            )
            moves.append(FailoverMove(cam.name, want, reason))
    return moves, covering
