"""Collecting a snapshot of the site: local files, the management server's status, and a
probe of every TLS listener it lists. The edges of the doctor; the checks are pure."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from watchkeep._home import Home
from watchkeep.doctor._local import (
    read_ca,
    read_crl,
    read_local_servers,
    read_trust_store,
)
from watchkeep.doctor._probe import PROBE_TIMEOUT, ProbeTarget, probe_endpoints
from watchkeep.doctor._snapshot import (
    DEFAULT_WARN_DAYS,
    HOME_PARTY,
    IssuedCertificate,
    ListedServer,
    SiteSnapshot,
    TrustStoreFacts,
)
from watchkeep.errors import WatchkeepError
from watchkeep.pki import fingerprint
from watchkeep.site import ServerRole

__all__ = ["collect_snapshot", "tls_targets"]


class _Answer:
    def __init__(self) -> None:
        self.status: Mapping[str, Any] | None = None
        self.management: str | None = None
        self.error: str | None = None
        self.fix = ""
        self.trust_dir: Path | None = None


async def _ask_management(home: Home, timeout: float) -> _Answer:
    from watchkeep.client import SiteClient, SiteConnection

    answer = _Answer()
    if not SiteConnection.path(home).exists():
        return answer  # not connected to a site: only the local files are checked
    try:
        connection = SiteConnection.load(home)
    except WatchkeepError as exc:
        answer.error, answer.fix = exc.describe(), exc.fix or ""
        return answer
    answer.management = connection.name
    answer.trust_dir = Path(connection.trust_store)
    try:
        async with asyncio.timeout(timeout), SiteClient(home, connection) as client:
            answer.status = await client.status()
            answer.management = client.management_name
    except WatchkeepError as exc:
        answer.error, answer.fix = exc.describe(), exc.fix or ""
    except TimeoutError:
        answer.error = f"no answer from {connection.address}:{connection.port} in {timeout:.0f} s"
        answer.fix = f"check that {connection.name} runs: watchkeep server run management ..."
    return answer


def tls_targets(status: Mapping[str, Any]) -> list[ProbeTarget]:
    """Every listener the status says speaks TLS now, by the contract of `site status`:
    `http` is plaintext; the control link of a recording server carries the management
    link, so it is TLS when the management server's encryption is on; every other listener
    is TLS when its own server's encryption is on. Offline servers are listed too."""
    servers = [ListedServer.from_json(s) for s in status.get("servers", ())]
    ms_encrypted = any(s.encryption for s in servers if s.role is ServerRole.MANAGEMENT)
    targets = []
    for server in servers:
        for listener, port in server.ports.items():
            if listener == "http":
                continue
            tls = ms_encrypted if listener == "control" else server.encryption
            if tls:
                targets.append(
                    ProbeTarget(server.name, listener, server.host, server.address, port)
                )
    return targets


def _site_cas(
    home: Home, status: Mapping[str, Any] | None, stores: Sequence[TrustStoreFacts]
) -> tuple[Path | None, tuple[Any, ...]]:
    """The site CA: this home's own when it is the CA's home; else the CA the management
    server names, found in a trust store on this host."""
    ca = read_ca(home.ca_cert) if home.ca_cert.exists() else None
    if ca is not None:
        # During a CA rotation both CAs are the site's: every store must hold the bundle.
        from watchkeep.pki import SitePKI
        from watchkeep.pki._rotation import trust_bundle

        try:
            return home.ca_cert, tuple(trust_bundle(SitePKI(home)))
        except (WatchkeepError, OSError, ValueError):
            return home.ca_cert, (ca,)
    named = (status or {}).get("site_ca_sha256_fingerprint")
    for store in stores:
        for candidate in store.cas:
            if named and fingerprint(candidate) == named:
                return None, (candidate,)
    return None, ()


def _inventory(home: Home) -> tuple[IssuedCertificate, ...]:
    """Every active certificate the CA issued, when this home is the CA's."""
    if not home.ca_cert.exists():
        return ()
    from watchkeep.pki import SitePKI

    try:
        records = SitePKI(home).certificates()
    except (WatchkeepError, OSError, ValueError):
        return ()  # the CA's files are checked by the other checks
    return tuple(
        IssuedCertificate(
            name=r.name,
            role=r.role,
            hosts=(*r.hosts, *r.ips),
            serial=r.serial,
            sha256_fingerprint=r.sha256_fingerprint,
            not_after=r.not_after,
            key_held=r.key_path is not None,
        )
        for r in records
    )


async def collect_snapshot(
    home: Home,
    *,
    server_configs: Sequence[Path] = (),
    warn_days: tuple[int, ...] = DEFAULT_WARN_DAYS,
    cli: str = "watchkeep",
    timeout: float = PROBE_TIMEOUT,
    own_status: tuple[str, Mapping[str, Any], Path | None] | None = None,
) -> SiteSnapshot:
    """Read this host's files, ask the management server, probe every TLS listener.

    ``own_status`` is (name, site status, trust store) when the management server itself
    runs the doctor: it has the status at hand and does not ask itself over the network.
    """
    # A config named twice (found in the home and passed as well) is read once.
    configs: dict[Path, Path] = {}
    for path in [*home.server_configs(), *server_configs]:
        configs.setdefault(path.resolve(), path)
    local, config_errors = read_local_servers(configs.values())
    if own_status is None:
        answer = await _ask_management(home, timeout * 2)
    else:
        answer = _Answer()
        answer.management, answer.status, answer.trust_dir = own_status
    trust_dir = answer.trust_dir or (home.trust_dir if home.trust_dir.is_dir() else None)
    home_trust = read_trust_store(HOME_PARTY, trust_dir) if trust_dir is not None else None
    stores = [home_trust] if home_trust is not None else []
    stores += [s.trust for s in local if s.trust is not None]
    site_ca_file, site_cas = _site_cas(home, answer.status, stores)
    own_crl = read_crl(home.crl) if home.crl.exists() else None
    probes = (
        await probe_endpoints(tls_targets(answer.status), timeout=timeout)
        if answer.status is not None
        else []
    )
    return SiteSnapshot(
        now=dt.datetime.now(dt.UTC),
        warn_days=warn_days,
        cli=cli,
        site_cas=site_cas,
        site_ca_file=site_ca_file,
        crls=(own_crl,) if own_crl is not None else (),
        status=answer.status,
        management=answer.management,
        management_error=answer.error,
        management_fix=answer.fix,
        home_trust=home_trust,
        local=tuple(local),
        config_errors=tuple(config_errors),
        probes=tuple(probes),
        issued=_inventory(home),
    )
