"""The management server process: its jobs wired together (each in a module of its own in
this package), its API listener, and the background work (failover)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any, Protocol

import sqlalchemy as sa
from aiohttp import web

from watchkeep.errors import StoreError, WatchkeepError
from watchkeep.pki import fingerprint
from watchkeep.servers._base import ServerProcess, utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._expiry import WatchedCertificate
from watchkeep.servers._listener import Listener
from watchkeep.servers._publish import Publisher, ca_bundle_route, start_publisher
from watchkeep.servers._renewal import ask_to_sign
from watchkeep.servers.management._camera_moves import CameraMoves
from watchkeep.servers.management._cameras import Cameras
from watchkeep.servers.management._certificates import Certificates
from watchkeep.servers.management._doctor_api import Doctor
from watchkeep.servers.management._encryption import Encryption
from watchkeep.servers.management._enrollment import Enrollments
from watchkeep.servers.management._failover import Failover
from watchkeep.servers.management._http import errors
from watchkeep.servers.management._login import Login
from watchkeep.servers.management._peers import ANNOUNCE_INTERVAL, Peers
from watchkeep.servers.management._pushes import ConfigPushes
from watchkeep.servers.management._registration import Registration
from watchkeep.servers.management._renewals import Renewals
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.servers.management._site_rules import SiteRules
from watchkeep.servers.management._status import Status
from watchkeep.servers.management._users import Users
from watchkeep.servers.management._webclient import WebClient, refuse_cross_origin
from watchkeep.site import Server, ServerRole
from watchkeep.store import SiteStore
from watchkeep.tls import ClientAuth, Endpoint

__all__ = ["ManagementServer"]


class Job(Protocol):
    """One of the management server's jobs: the routes of the API that it answers."""

    def add_routes(self, router: web.UrlDispatcher) -> None: ...


log = logging.getLogger("watchkeep.management")


class ManagementServer(ServerProcess):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.store = SiteStore(
            config.database_url or f"sqlite:///{config.data_dir / 'site.db'}",
            password_file=config.database_password_file,
        )
        self.peers = Peers(config, self.store, self._me)
        self._switching = asyncio.Lock()  # one switch of its own listener at a time
        self._switch_due = False  # a switch this server announced itself, not yet begun
        self._signing_peer_turn = 0  # which other management server signs its renewals
        self.site = SiteView(config, self.store, self._me, self.peers.others)
        self.listener: Listener | None = None
        self.publisher: Publisher | None = None  # [ports] publish: the CA and CRLs over HTTP
        self.sessions = Sessions(config, self.store, on_revoked=self._spawn_push)
        # Signs every server's renewal (and its own) through the CA home, when it has one.
        self.renewals = Renewals(config, self.site, self._fresh_trust)
        self.pushes = ConfigPushes(
            config,
            self.site,
            self.sessions,
            self.renewals.pki if config.ca_home is not None else None,
            lambda: self.client_ssl_context(present_certificate=True),
        )
        self.failover = Failover(
            config, self.site, self.pushes.push, leads=lambda: self.peers.leads
        )
        self.enrollments = Enrollments(
            config, self.site, self.sessions, self.trust, self.pushes.trust_payload
        )
        self.registration = Registration(
            config,
            self.site,
            self.sessions,
            self.pushes,
            self.failover,
            self.renewals,
            joined=self.enrollments.check_heartbeat,
        )
        self.users = Users(config, self.store, self.sessions)
        jobs: list[Job] = [
            Login(config, self.site, self.sessions),
            self.users,
            self.registration,
            self.enrollments,
            self.renewals,
            Cameras(
                config,
                self.site,
                self.sessions,
                self.failover,
                spawn_push=self._spawn_push,
                client_context=lambda: self.client_ssl_context(present_certificate=False),
            ),
            Encryption(
                config,
                self.site,
                self.sessions,
                site_ca_fingerprint=self._site_ca_fingerprint,
                switch_own_listener=self._switch_listener_soon,
                spawn_push=self._spawn_push,
            ),
            status := Status(
                config,
                self.site,
                self.sessions,
                self.renewals,
                lambda: self.renewal,
                camera_problems=self.registration.camera_problems,
                site_ca_fingerprint=self._site_ca_fingerprint,
            ),
            # the management web client, and the API only it needed
            WebClient(self.site),
            SiteRules(
                config, self.site, self.sessions, site_ca_fingerprint=self._site_ca_fingerprint
            ),
            Certificates(
                config, self.site, self.sessions, self.renewals, spawn_push=self._spawn_push
            ),
            Doctor(
                config,
                self.sessions,
                site_status=lambda: status.status_json({"role": "administrator"}),
            ),
            CameraMoves(self.site, self.sessions, self.failover, spawn_push=self._spawn_push),
        ]
        self.app = web.Application(
            middlewares=[errors, refuse_cross_origin], client_max_size=1 << 20
        )
        for job in jobs:
            job.add_routes(self.app.router)
        self.app.router.add_get("/metrics", self.metrics)
        # public: the site CA for `trust install --from`, checked there by its fingerprint
        self.app.router.add_get("/api/v1/ca", ca_bundle_route(config))
        self.runner = config.listener_limits.runner(self.app)

    # -- the site and this server in it --------------------------------------------------

    @property
    def encryption(self) -> bool:
        return self.site.encryption

    def _me(self) -> Server:
        return Server(
            name=self.config.name,
            role=ServerRole.MANAGEMENT,
            host=self.config.host,
            address=self.config.address,
            ports=dict(self.config.ports),
            encryption=self.encryption,
            online=True,
            last_seen=utcnow(),
            readiness=self.readiness,
            encrypted_now=self.listener is not None and self.listener.tls,
        )

    def _site_ca_fingerprint(self) -> str | None:
        """The CA that issued this server's certificate: the one every party must trust."""
        if self.tls is None:
            return None
        issuer = self.tls.certificate.issuer
        for ca in self.trust().certificates():
            if ca.subject == issuer:
                return fingerprint(ca)
        return None

    def _spawn_push(self) -> None:
        # Asked now (pending from this moment, for whoever watches the metrics), made in
        # the background.
        self.spawn(self.pushes.serve(self.pushes.ask()))

    # -- metrics ---------------------------------------------------------------------------

    def metrics_certificates(self) -> list[WatchedCertificate]:
        """Its own and its CAs, and every certificate the site's servers report, so that one
        scrape of the management server covers the site."""
        found = self.watched_certificates()
        for server in self.site.servers()[1:]:
            cert = server.readiness.certificate if server.readiness else None
            if cert is not None:
                found.append(
                    WatchedCertificate(
                        "server",
                        server.name,
                        server.role.value,
                        server.host,
                        cert.serial,
                        cert.not_before or cert.not_after,
                        cert.not_after,
                    )
                )
        return found

    def metrics_extra(self) -> str:
        return self.pushes.metrics() + self.renewals.metrics()

    # -- its own certificate: renewed like every server's, signed here -------------------

    def _signing_peer(self) -> Server | None:
        """Without a CA of its own: the other management server of the site asked to sign
        this one's renewals (the next, once one says it has no CA)."""
        others = sorted(
            (s for s in self.peers.others() if "api" in s.ports), key=lambda s: not s.online
        )  # those heard from lately first
        return others[self._signing_peer_turn % len(others)] if others else None

    def renewal_audience(self) -> str:
        peer = self._signing_peer() if self.config.ca_home is None else None
        return peer.host if peer is not None else self.config.host

    async def sign_renewal(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.config.ca_home is not None:
            assert self.renewal is not None
            return await asyncio.to_thread(self.renewals.sign, request, self.renewal.current())
        peer = self._signing_peer()
        if peer is None:
            raise WatchkeepError(
                f"{self.config.name}: the CA is offline (no [site] ca_home here, and the site "
                "has no other management server): nothing can sign its renewal",
                fix="start the management server that holds the CA, or on the CA's machine: "
                "watchkeep cert sign-csr CSR --role management --replace, and install the "
                "files (or set [site] ca_home)",
            )
        # Asked like any server asks it: proven by this certificate (mutual TLS when that
        # management server is encrypted, the request's signature in any case).
        endpoint = Endpoint(peer.name, peer.host, peer.address, peer.ports["api"], peer.encryption)
        context = self.client_ssl_context(present_certificate=True) if endpoint.tls else None

        def another() -> bool:
            self._signing_peer_turn += 1
            return True

        return await ask_to_sign(
            self.config.name, endpoint, request, ssl_context=context, another=another
        )

    def _fresh_trust(self) -> dict[str, Any]:
        """The site's trust bundle, its own trust store kept in step with it (fresh CRLs:
        it verifies every server's certificate with them), and served at once."""
        payload = self.pushes.trust_payload()
        if self.tls is not None and self.tls.changed():
            self.tls.reload()
        return payload

    async def keep_trust_fresh(self) -> None:
        payload = await asyncio.to_thread(self._fresh_trust)
        if self.renewal is not None:
            # the CA servers are asked to move to, after a rotation: this one too
            target = payload.get("renew_to")
            self.renewal.renew_to = target if isinstance(target, str) else None

    # -- its own encryption ----------------------------------------------------------------

    def _switch_listener_soon(self, changed_at: dt.datetime) -> None:
        # Switch after the answer that announced it has gone out over the old listener.
        self._switch_due = True
        asyncio.get_running_loop().call_later(
            0.2, lambda: self.spawn(self._switch_listener(changed_at))
        )

    async def _follow_encryption(self) -> None:
        """The site's management-server encryption, changed at another management server
        of the site (one database): followed here within a second."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), ANNOUNCE_INTERVAL)
            try:
                want_tls = await asyncio.to_thread(lambda: self.encryption)
            except (StoreError, sa.exc.SQLAlchemyError):
                continue  # the announcements say so, once a second
            if (
                self.listener is not None
                and want_tls != self.listener.tls
                and not (self._switch_due or self._switching.locked())
            ):
                log.info(
                    "%s: management-server encryption turned %s at another management "
                    "server; following",
                    self.config.name,
                    "on" if want_tls else "off",
                )
                await self._switch_listener(utcnow())

    async def _switch_listener(self, changed_at: dt.datetime) -> None:
        assert self.listener is not None
        self._switch_due = False
        if self._switching.locked():
            return  # the following loop looks at the setting again when it is done
        async with self._switching:
            await self._switch_listener_now(changed_at)

    async def _switch_listener_now(self, changed_at: dt.datetime) -> None:
        assert self.listener is not None
        want_tls = self.encryption
        if want_tls == self.listener.tls:
            return
        if not want_tls:
            # Recording (and mobile) servers take the link down to plaintext only when told
            # so over TLS, in a heartbeat answer: let every online one hear it first.
            deadline = asyncio.get_running_loop().time() + self.config.failover_after
            while asyncio.get_running_loop().time() < deadline and any(
                s.role is not ServerRole.MANAGEMENT
                and s.online
                and s.last_seen is not None
                and s.last_seen < changed_at
                for s in self.site.servers()
            ):
                await asyncio.sleep(0.1)
        await self.listener.restart(self.server_ssl_context() if want_tls else None)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        # Recording servers dial in with their certificates when the link is encrypted.
        self.check_certificate_at_start(ClientAuth.OPTIONAL)
        if self.encryption and self.tls is None:
            raise WatchkeepError(
                f"{self.config.name}: encryption is on but no certificate is configured in "
                f"{self.config.path}",
                fix="set [tls] certificate, key and trust_store",
            )
        self.users.bootstrap_admin()
        self.peers.start()
        await self.runner.setup()
        self.listener = Listener(
            self.config.name,
            "api",
            self.runner,
            self.config.address,
            self.config.ports["api"],
            limits=self.config.listener_limits,
        )
        await self.listener.start(self.server_ssl_context() if self.encryption else None)
        self.publisher = await start_publisher(self.config)
        self.spawn(self.peers.run(self.stopping))
        self.spawn(self._follow_encryption())
        self.spawn(self.failover.run(self.stopping))

    async def shutdown(self) -> None:
        self.registration.flush()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.runner.cleanup()
        self.store.dispose()
