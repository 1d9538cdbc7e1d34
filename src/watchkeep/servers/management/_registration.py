"""Servers joining and staying in the site: heartbeats (registration key, then mutual TLS
once the management server is encrypted), each server bound to the role, host and address
it registered with, and moved only by an administrator. A heartbeat's answer is the
server's configuration, or only its digest when the server already runs it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import ipaddress
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, TypeVar

from aiohttp import web

from watchkeep._names import validate_host_name
from watchkeep.errors import StoreError, WatchkeepError
from watchkeep.servers._base import utcnow
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers.management._failover import Failover
from watchkeep.servers.management._pushes import ConfigPushes, SiteSnapshot
from watchkeep.servers.management._renewals import Renewals
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import (
    Readiness,
    Server,
    ServerRole,
    identity_change,
    registration_blocker,
)

__all__ = ["JoinedCheck", "Registration"]

# Whether a server joined with a token, and the refusal of its heartbeat if unproven
# (servers/management/_enrollment.py).
JoinedCheck = Callable[
    [web.Request, str, dict[str, Any], ServerRole, str, str], tuple[bool, web.Response | None]
]

log = logging.getLogger("watchkeep.management")
T = TypeVar("T")

HEARTBEAT_BATCH = 0.2  # seconds: heartbeats heard meanwhile are written together
SNAPSHOT_AGE = 0.5  # seconds a heartbeat's answer may lag a change of the site
SITE_MAP_LAG = 10.0  # seconds a server may run an older site map (never its own part)
READINESS_REWRITE = 60.0  # seconds: a server's unchanged readiness is written again
SECURITY_LOG_INTERVAL = 60.0  # a refused attempt to speak for a server, logged once a minute
_MAX_CAMERA_PROBLEMS = 10_000
_MAX_PROBLEM_TEXT = 500


def _camera_problems(value: object) -> dict[str, str]:
    """The ``camera_problems`` of a heartbeat, kept within bounds; anything else is none."""
    if not isinstance(value, dict):
        return {}
    return {
        name[:100]: text[:_MAX_PROBLEM_TEXT]
        for name, text in list(value.items())[:_MAX_CAMERA_PROBLEMS]
        if isinstance(name, str) and isinstance(text, str)
    }


_CLAIM_KEYS = ("role", "host", "address", "ports", "readiness", "encrypted_now")


class _Claim(NamedTuple):
    """What a heartbeat says of the server that sent it."""

    role: ServerRole
    host: str
    address: str
    ports: dict[str, int]
    readiness: Readiness
    encrypted_now: bool


class _Told(NamedTuple):
    digest: str
    own_digest: str
    security_digest: str
    at: float


class Registration:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        pushes: ConfigPushes,
        failover: Failover,
        renewals: Renewals,
        joined: JoinedCheck | None = None,
    ) -> None:
        self.config = config
        self.joined = joined
        self.site = site
        self.sessions = sessions
        self.pushes = pushes
        self.failover = failover
        self.renewals = renewals  # each server reports its own renewals in its heartbeats
        # Per recording server, its cameras that send it no pictures, and why.
        self.camera_problems: dict[str, dict[str, str]] = {}
        self._security_logged: dict[str, float] = {}
        self._pending: dict[str, tuple[dt.datetime, Readiness, bool]] = {}
        self._heard: dict[str, float] = {}  # server -> when (monotonic) its heartbeat came
        self._told: dict[str, _Told] = {}  # server -> the configuration it was last sent
        self._flush: asyncio.TimerHandle | None = None
        # Per name and host being registered: its lock and how many wait for it or hold it.
        self._registrations: dict[str, list[Any]] = {}
        self._writing: asyncio.Future[None] | None = None  # the write of the last flush
        # Per TLS connection: whether it presented a certificate, and the host names in it.
        self._peer_names: weakref.WeakKeyDictionary[object, tuple[bool, list[str]]] = (
            weakref.WeakKeyDictionary()
        )
        self._claims: dict[str, tuple[tuple[object, ...], _Claim]] = {}  # as sent, parsed
        # When each server's readiness was last written (the one parsed then), and the
        # servers whose pending heartbeat says the same.
        self._readiness_written: dict[str, tuple[Readiness, float]] = {}
        self._readiness_kept: set[str] = set()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/servers/{name}/heartbeat", self.heartbeat)
        router.add_patch("/api/v1/servers/{name}", self.update_server)

    async def heartbeat(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await json_object(request)
        try:
            claim = self._claim(name, body)
            role, host, address = claim.role, claim.host, claim.address
        except (KeyError, TypeError, ValueError, OverflowError, WatchkeepError) as exc:
            return problem(400, "bad heartbeat", f"malformed heartbeat from {name}: {exc}")
        if role is ServerRole.MANAGEMENT:
            return problem(400, "bad heartbeat", "a management server does not register")
        # A server that joined with a token proves itself with its certificate instead of
        # the shared registration key.
        joined, refused_join = (
            self.joined(request, name, body, role, host, address) if self.joined else (False, None)
        )
        if refused_join is not None:
            return refused_join
        key = self.config.registration_key
        if (
            key
            and not joined
            and not hmac.compare_digest(str(body.get("registration_key", "")), key)
        ):
            return problem(
                401,
                "registration refused",
                f"{name} presented no or a wrong registration key",
                code="auth.registration",
                server=name,
                fix="copy the site's registration key file into the server's [management] section",
            )
        # One row for the server and the site snapshot (rebuilt only when the site
        # changed): a heartbeat's work does not grow with the number of servers.
        snapshot = self.pushes.snapshot(SNAPSHOT_AGE)
        # A server heard lately is in the snapshot (as of the site version: its identity
        # and encryption); only a newcomer, or one not heard for a while, is read.
        heard_lately = time.monotonic() - self._heard.get(name, -1e9) < self.config.failover_after
        existing = snapshot.servers.get(name) if heard_lately else None
        if existing is not None:
            return await self._accept(request, body, claim, snapshot, existing, [], True)
        # Any other is read, checked and written one at a time for its name and its host
        # (two newcomers cannot take one name or host together; others go on at once), on
        # PostgreSQL the database's part in a thread: there these are round trips, and the
        # event loop goes on serving the servers heard lately.
        async with self._registering(f"name:{name}", f"host:{host}"):
            existing, everyone = await self._in_store(self._look_up, name, host)
            return await self._accept(
                request, body, claim, snapshot, existing, everyone, heard_lately
            )

    @contextlib.asynccontextmanager
    async def _registering(self, *keys: str) -> AsyncIterator[None]:
        """Held while a server of these names (its name, its host) is read, checked and
        written: one at a time for each."""
        entries = [self._registrations.setdefault(key, [asyncio.Lock(), 0]) for key in keys]
        for entry in entries:
            entry[1] += 1
        try:
            async with contextlib.AsyncExitStack() as held:
                for entry in entries:
                    await held.enter_async_context(entry[0])
                yield
        finally:
            for key, entry in zip(keys, entries, strict=True):
                entry[1] -= 1
                if entry[1] == 0:
                    del self._registrations[key]

    async def _in_store(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` of the store: in a thread on PostgreSQL (round trips the event loop must
        not wait for), at once on SQLite (a file of this machine: its reads take less than
        a thread's turn on a busy machine)."""
        if self.site.store.local:
            return call(*args, **kwargs)
        return await asyncio.to_thread(call, *args, **kwargs)

    def _look_up(self, name: str, host: str) -> tuple[Server | None, list[Server]]:
        """A server not heard lately: its row; for a newcomer, the servers its name and
        host must not be: the management servers and the server registered with that
        host, if any (not the whole site)."""
        offline_after = dt.timedelta(seconds=self.config.failover_after)
        existing = self.site.store.server(name, now=utcnow(), offline_after=offline_after)
        if existing is not None:
            return existing, []
        everyone = self.site.managers()
        holder = self.site.store.server_with_host(host, now=utcnow(), offline_after=offline_after)
        everyone += [holder] if holder is not None else []
        return next((s for s in everyone if s.name == name), None), everyone

    async def _accept(
        self,
        request: web.Request,
        body: dict[str, Any],
        claim: _Claim,
        snapshot: SiteSnapshot,
        existing: Server | None,
        everyone: list[Server],
        heard_lately: bool,
    ) -> web.Response:
        """The heartbeat of ``claim``'s server, ``existing`` as registered (None: a
        newcomer), checked, recorded and answered."""
        name = request.match_info["name"]
        role, host, address, ports, readiness, encrypted_now = claim
        claimed = Server(name, role, host, address, ports, readiness=readiness)
        changed = identity_change(claimed, existing, everyone)
        if changed is not None:
            self._security_event(
                f"identity:{name}:{request.remote}",
                "a heartbeat from %s for %s claimed %s %s at %s; refused: %s",
                request.remote or "unknown",
                name,
                role.value,
                host,
                address,
                changed.message,
            )
            status = 409
            title = "server identity is fixed" if existing else "host already registered"
            return problem(status, title, changed.message, code=changed.code, server=name,
                           fix=changed.fix)  # fmt: skip
        # site.ms_requires_all_rs before the certificate check: a recording server that
        # cannot be encrypted (no certificate yet, say) hears why, not only that it
        # presented no certificate.
        blocker = registration_blocker(claimed, snapshot.servers[self.config.name])
        if blocker is not None:
            return problem(
                409,
                "recording server not encrypted",
                blocker.message,
                code=blocker.code,
                server=name,
                fix=blocker.fix,
            )
        # Every server authenticates with its certificate on the encrypted link, whatever
        # role it claims (mutual TLS).
        refused = self._check_peer(request, name, existing.host if existing else host)
        if refused is not None:
            return refused
        encryption = existing.encryption if existing else False
        if snapshot.common["ms_encryption"] and role.records:
            encryption = True  # site.ms_requires_all_rs: an encrypted site encrypts newcomers
        heard = Server(
            name,
            role,
            host,
            address,
            ports,
            encryption=encryption,
            readiness=readiness,
            encrypted_now=encrypted_now,
        )
        if existing is None or existing.ports != ports:
            await self._in_store(
                self.site.store.record_heartbeat,
                heard,
                now=utcnow(),
                new=existing is None,
                changed=existing is not None,
            )
        else:
            self._seen(name, readiness, encrypted_now)
        if existing is None:
            log.info(
                "%s: %s server %s registered (%s, %s)",
                self.config.name,
                role.value,
                name,
                host,
                address,
            )
        self.camera_problems[name] = _camera_problems(body.get("camera_problems"))
        self.renewals.heard(name, body.get("renewal"))
        if not heard_lately and (existing is None or not existing.online):
            self.failover.soon()  # one plan for however many come now
        self._heard[name] = time.monotonic()
        answer = self.pushes.config_answer(heard, SNAPSHOT_AGE)
        told = self._told.get(name)
        if body.get("config_digest") == answer.digest or (
            # Its own part and what all must hear are what it has: the rest (the site map,
            # cameras elsewhere) is sent at most every SITE_MAP_LAG seconds, or a storm of
            # registrations would send every server the whole site with each of them.
            told is not None
            and role.records  # a mobile server's part is the site's cameras
            and body.get("config_digest") == told.digest
            and (told.own_digest, told.security_digest)
            == (answer.own_digest, answer.security_digest)
            and time.monotonic() - told.at < SITE_MAP_LAG
        ):
            # What the server already has: a few bytes instead of every camera of the site.
            return web.json_response(
                {
                    "unchanged": True,
                    "config_digest": body.get("config_digest"),
                    "ms_encryption": snapshot.common["ms_encryption"],
                }
            )
        if len(self._told) >= 100_000:
            self._told.clear()
        self._told[name] = _Told(answer.digest, answer.own_digest, answer.security_digest,
                                 time.monotonic())  # fmt: skip
        return web.Response(text=answer.text, content_type="application/json")

    def _claim(self, name: str, body: dict[str, Any]) -> _Claim:
        """What a heartbeat says of its server, checked; parsed again only when it differs
        from what the last one said (a server says the same every second)."""
        sent = tuple(body.get(key) for key in _CLAIM_KEYS)
        last = self._claims.get(name)
        if last is not None and last[0] == sent:
            return last[1]
        claim = _Claim(
            ServerRole(str(body.get("role"))),
            validate_host_name(str(body.get("host", ""))),
            str(ipaddress.ip_address(str(body["address"]))),
            {str(k): int(v) for k, v in dict(body["ports"]).items()},
            Readiness.from_json(dict(body.get("readiness") or {})),
            bool(body.get("encrypted_now", False)),
        )
        if len(self._claims) >= 100_000:  # names come from anyone's requests
            self._claims.clear()
        self._claims[name] = (sent, claim)
        return claim

    def _seen(self, name: str, readiness: Readiness, encrypted_now: bool) -> None:
        """Record a registered server's heartbeat with the others of the next moment: one
        transaction for many heartbeats (a thousand servers make a thousand a second). Its
        readiness is written when it says something new, and at least every
        READINESS_REWRITE seconds (its days left, to the hundredth of a day)."""
        now = time.monotonic()
        written = self._readiness_written.get(name)
        if written is not None and written[0] is readiness and now - written[1] < READINESS_REWRITE:
            self._readiness_kept.add(name)
        else:
            self._readiness_kept.discard(name)
            self._readiness_written[name] = (readiness, now)
        self._pending[name] = (utcnow(), readiness, encrypted_now)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(HEARTBEAT_BATCH, self._flush_soon)

    def _flush_soon(self) -> None:
        """Write the heartbeats heard meanwhile in a thread (the event loop goes on serving
        heartbeats while the database works); one write at a time, in order."""
        self._flush = None
        loop = asyncio.get_running_loop()
        if self._writing is not None and not self._writing.done():
            self._flush = loop.call_later(HEARTBEAT_BATCH, self._flush_soon)
            return
        pending, kept = self._take()
        if pending:
            self._writing = loop.run_in_executor(None, self._write, pending, kept)

    def flush(self) -> None:
        """Write the heartbeats heard since the last write, now (at shutdown)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._write(*self._take())

    def _take(self) -> tuple[dict[str, tuple[dt.datetime, Readiness, bool]], set[str]]:
        pending, self._pending = self._pending, {}
        kept, self._readiness_kept = self._readiness_kept & pending.keys(), set()
        return pending, kept

    def _write(
        self, pending: dict[str, tuple[dt.datetime, Readiness, bool]], kept: set[str]
    ) -> None:
        try:
            self.site.store.record_seen(pending, readiness_unchanged=kept)
        except StoreError as exc:
            log.warning("%s: cannot record %d heartbeats: %s", self.config.name, len(pending), exc)
            for name in pending:  # their readiness is written with their next heartbeat
                self._readiness_written.pop(name, None)

    def _check_peer(self, request: web.Request, name: str, host: str) -> web.Response | None:
        """On an encrypted management link, the caller must prove it is ``host``, the host
        ``name`` is registered with: a certificate of the site CA for another server speaks
        for that server only."""
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        if tls is None:
            return None
        # The certificate a connection presented is decoded once, not with every heartbeat.
        peer = self._peer_names.get(tls)
        if peer is None:
            cert = request.transport.get_extra_info("peercert") if request.transport else None
            dns = [v.lower() for k, v in (cert or {}).get("subjectAltName", ()) if k == "DNS"]
            self._peer_names[tls] = peer = (bool(cert), dns)
        presented, names = peer
        if not presented:
            return problem(
                401,
                "client certificate required",
                f"management server encryption is on: {name} must present its certificate "
                "from the site CA (mutual TLS)",
                code="cert.chain",
                server=name,
                fix="set [tls] certificate and key in the server's config",
            )
        if host not in names:
            self._security_event(
                f"cert:{name}:{','.join(names)}",
                "%s presented a certificate for %s to speak for %s (%s); refused",
                request.remote or "unknown",
                ", ".join(names) or "no host name",
                name,
                host,
            )
            return problem(
                403,
                "certificate does not match the server",
                f"{name} is {host} but the certificate presented names "
                f"{', '.join(names) or 'nothing'}",
                code="cert.hostname",
                server=name,
                fix=f"run {name} with its own certificate: watchkeep cert issue --role ROLE "
                f"--host {host} --replace",
            )
        return None

    def _security_event(self, key: str, message: str, *args: object) -> None:
        """Log a refused attempt to speak for a server: one line, naming both sides, at most
        once a minute for each ``key`` (the refused party repeats every heartbeat)."""
        now = time.monotonic()
        if now - self._security_logged.get(key, -SECURITY_LOG_INTERVAL) < SECURITY_LOG_INTERVAL:
            return
        if len(self._security_logged) >= 10_000:
            self._security_logged.clear()
        self._security_logged[key] = now
        log.warning("%s: security: " + message, self.config.name, *args)

    async def update_server(self, request: web.Request) -> web.Response:
        """An administrator moves a registered server to another host name or address (its
        own heartbeats cannot: the management link binds a server to both)."""
        claims = self.sessions.claims(request, role="administrator")
        body = await json_object(request)
        name = request.match_info["name"]
        everyone = self.site.servers()
        target = next((s for s in everyone if s.name == name), None)
        if target is None or target.role is ServerRole.MANAGEMENT:
            return problem(
                404,
                "unknown server",
                f"no registered server named {name!r}",
                fix="watchkeep site status lists the servers",
            )
        try:
            host = validate_host_name(str(body.get("host", target.host)))
            address = str(ipaddress.ip_address(str(body.get("address", target.address))))
        except (ValueError, WatchkeepError) as exc:
            return problem(400, "bad server", f"{name}: {exc}", fix="give a host name and an IP")
        other = next((s for s in everyone if s.host == host and s.name != name), None)
        if other is not None:
            return problem(
                409,
                "host already registered",
                f"{host} is the host of {other.name}",
                code="auth.registration",
                server=name,
                fix=f"choose another host for {name}",
            )
        self.site.store.move_server(name, host, address)
        log.info(
            "%s: server %s moved from %s at %s to %s at %s by %r",
            self.config.name,
            name,
            target.host,
            target.address,
            host,
            address,
            claims.get("sub"),
        )
        return web.json_response({"name": name, "host": host, "address": address})
