"""What recording and mobile servers share: the link to the management server.

They register and heartbeat over it, take their configuration from its answers (or from a
push on the control link), verify its tokens offline with the key it hands out, and keep
that state across restarts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
from aiohttp import web

from watchkeep._clock import utcnow
from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import (
    ConnectionFailed,
    PlaintextToTlsPort,
    TlsToPlaintextPort,
    WatchkeepError,
)
from watchkeep.servers._base import ServerProcess
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._renewal import ask_to_sign, crls_stale, install_trust_payload
from watchkeep.servers._tokens import InvalidToken, Revocations, Scope, TokenVerifier
from watchkeep.tls import Endpoint, TrustMaterial, client_context

__all__ = ["LinkedServer"]

log = logging.getLogger("watchkeep.servers")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LinkedServer(ServerProcess):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        assert config.management is not None
        self.link = config.management
        state = self.load_state()
        self.ms_encryption: bool = bool(state.get("ms_encryption", False))
        self.encryption: bool = bool(state.get("encryption", False))
        # Whether the management server has ever configured this server (its settings,
        # encryption included, are known; kept on disk).
        self.configured: bool = "encryption" in state
        self.camera_config: list[dict[str, Any]] = list(state.get("cameras", []))
        self.covering: str | None = state.get("covering")
        self.site: dict[str, Any] = dict(state.get("site", {}))
        self.site_cameras: list[dict[str, Any]] = list(state.get("site_cameras", []))
        self._token_key: str | None = state.get("token_public_key")
        # The user tokens the management server revoked (from its configuration).
        self.token_revocations = Revocations.from_json(state.get("token_revocations"))
        self.verifier: TokenVerifier | None = (
            TokenVerifier.from_b64(self._token_key) if self._token_key else None
        )
        self.registered = asyncio.Event()
        self._config_lock = asyncio.Lock()
        self._saved_state: dict[str, Any] | None = None
        # The digest of the last configuration taken in full: sent with each heartbeat, so
        # that the answer carries the configuration only when it changed.
        self.config_digest = ""
        self._config_order: tuple[str, int] | None = None  # of the last one taken
        # Running user requests: id(request) -> (token claims, connection).
        self._user_requests: dict[int, tuple[dict[str, Any], asyncio.BaseTransport | None]] = {}
        self.last_refusal: str | None = None
        self._plaintext_announced = False  # told over TLS that the management link goes plain
        self._signer: tuple[tuple[int, int], Any, Any] | None = None  # (files' stamp, key, cert)
        self._ms = 0  # which of link.addresses() the heartbeats go to now
        # Which of them renewals go to, once the one the heartbeats reach said it holds no
        # CA (of a site's management servers, only those with a CA home sign).
        self._renewal_ms: int | None = None

    # -- tokens --------------------------------------------------------------------------

    def token_middleware(self, scope: Scope) -> Any:
        """Every request needs a token of ``scope`` signed by this site's management server
        for this server (its audience)."""

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in self.public_paths:
                return await handler(request)
            header = request.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
            if self.verifier is None:
                return problem(
                    503,
                    "not registered",
                    f"{self.config.name} has not registered with the management server yet",
                    server=self.config.name,
                )
            try:
                request["claims"] = self.verifier.verify(
                    token, scope=scope, audience=self.config.name, revoked=self.token_revocations
                )
                request["token"] = token  # for a handler that calls on with it (a relay)
            except InvalidToken as exc:
                return problem(401, "invalid token", exc.message, code="auth.token", fix=exc.fix)
            if scope == "control":
                refused = self.check_control_peer(request)
                if refused is not None:
                    return refused
                return await handler(request)
            # A user's request is remembered while it runs (a live stream, for hours): a
            # revocation that arrives meanwhile ends it (end_revoked_requests).
            self._user_requests[id(request)] = (request["claims"], request.transport)
            try:
                return await handler(request)
            finally:
                self._user_requests.pop(id(request), None)

        return middleware

    def end_revoked_requests(self) -> None:
        """Close the connections of running requests whose tokens are now revoked."""
        for claims, transport in list(self._user_requests.values()):
            if transport is not None and self.token_revocations.why(claims) is not None:
                log.info(
                    "%s: ending a request of user %r: its token was revoked",
                    self.config.name,
                    claims.get("sub"),
                )
                # At once, buffered video and all: a client that stopped reading must not
                # keep the connection open by not taking what is queued for it.
                cast(asyncio.Transport, transport).abort()

    public_paths: frozenset[str] = frozenset()

    def check_control_peer(self, request: web.Request) -> web.Response | None:
        return None

    def management_name(self) -> str:
        # The management server's name as it signs control tokens; learnt from the site map.
        for name, info in self.site.items():
            if info.get("role") == "management":
                return str(name)
        return ""

    def management_names(self) -> set[str]:
        """Every management server of the site, by the site map (they may be several)."""
        return {str(n) for n, info in self.site.items() if info.get("role") == "management"}

    def _management_endpoint(self, tls: bool, index: int | None = None) -> Endpoint:
        """The management server the heartbeats go to now (or link.addresses()[index])."""
        addresses = self.link.addresses()
        host, address, port = addresses[(self._ms if index is None else index) % len(addresses)]
        name = next(
            (
                str(n)
                for n, i in self.site.items()
                if i.get("role") == "management" and i.get("host") == host
            ),
            host,
        )
        return Endpoint(name, host, address, port, tls)

    def _next_management(self, why: str, failed: int) -> bool:
        """Turn from management server ``failed`` (an index into link.addresses(), as
        ``self._ms`` was when the call began) to the site's next one, when it has another.

        The heartbeats and the calls relayed for users fail over concurrently: each turns
        only from the server it found dead, or two of them would turn twice and, with two
        management servers, back to the dead one."""
        count = len(self.link.addresses())
        if count < 2:
            return False
        if failed % count != self._ms % count:
            return True  # another caller turned already
        gone = self._management_endpoint(False).host
        self._ms = (self._ms + 1) % count
        log.warning(
            "%s: management server %s does not answer (%s); turning to %s",
            self.config.name,
            gone,
            why,
            self._management_endpoint(False).host,
        )
        return True

    # -- configuration from the management server ----------------------------------------

    async def apply_config(self, config: dict[str, Any], *, authenticated: bool = False) -> None:
        """Take the configuration the management server sent; ``authenticated`` when it came
        over a verified TLS link (only then may it add or remove trusted CAs)."""
        # A heartbeat's answer and a push on the control link can arrive together: taken one
        # at a time, or both restart the same listener (the second bind fails with
        # EADDRINUSE) and stop the same camera twice.
        async with self._config_lock:
            order = config_order(config)
            if superseded(order, self._config_order):
                log.debug(
                    "%s: a configuration older than the one taken came late; ignored",
                    self.config.name,
                )
                return
            trust = config.get("trust")
            if isinstance(trust, dict) and self.config.trust_store is not None:
                self.install_trust(trust, authenticated=authenticated)
            key = config.get("token_public_key")
            if isinstance(key, str) and key != self._token_key:
                self._token_key = key
                self.verifier = TokenVerifier.from_b64(key)
            self.configured = True
            self.ms_encryption = bool(config.get("ms_encryption", self.ms_encryption))
            self.encryption = bool(config.get("encryption", self.encryption))
            self.covering = config.get("covering")
            if "token_revocations" in config:
                revocations = Revocations.from_json(config["token_revocations"])
                if revocations != self.token_revocations:
                    self.token_revocations = revocations
                    self.end_revoked_requests()
            if isinstance(config.get("site"), dict):
                self.site = dict(config["site"])
            if isinstance(config.get("site_cameras"), list):
                self.site_cameras = [c for c in config["site_cameras"] if isinstance(c, dict)]
            cams = config.get("cameras")
            if isinstance(cams, list):
                await self.set_cameras([c for c in cams if isinstance(c, dict) and "name" in c])
            state = {
                "ms_encryption": self.ms_encryption,
                "encryption": self.encryption,
                "cameras": self.camera_config,
                "covering": self.covering,
                "site": self.site,
                "site_cameras": self.site_cameras,
                "token_public_key": self._token_key,
                "token_revocations": self.token_revocations.as_json(),
            }
            # Every heartbeat's answer carries the configuration, mostly unchanged: writing
            # (and fsyncing) it each time blocked the event loop behind the recorder's disk
            # traffic, and with it every live stream (bench/results/stream.md).
            if state != self._saved_state:
                self.save_state(state)
                self._saved_state = copy.deepcopy(state)
            await self.reconcile_listeners()
            # Only now, all of it taken: a configuration that failed half-way comes again.
            digest = config.get("config_digest")
            self.config_digest = digest if isinstance(digest, str) else ""
            if order is not None:
                self._config_order = order

    def install_trust(self, trust: dict[str, Any], *, authenticated: bool) -> None:
        assert self.config.trust_store is not None
        install_trust_payload(
            self.config.trust_store, trust, log_as=self.config.name, authenticated=authenticated
        )
        if authenticated and self.renewal is not None:
            # After a rotation, once every server trusts the new CA: renew from it.
            target = trust.get("renew_to")
            self.renewal.renew_to = target if isinstance(target, str) else None

    # -- its own certificate (servers._renewal) ------------------------------------------

    def _renewal_endpoint(self, tls: bool) -> Endpoint:
        if self._renewal_ms is None:
            return self._management_endpoint(tls)
        heartbeats, self._ms = self._ms, self._renewal_ms
        try:
            return self._management_endpoint(tls)
        finally:
            self._ms = heartbeats

    def renewal_audience(self) -> str:
        # the management server the renewal goes to (of several, the one heartbeats reach,
        # unless it holds no CA)
        return self._renewal_endpoint(False).host

    async def sign_renewal(self, request: dict[str, Any]) -> dict[str, Any]:
        """Over the management link, proving who asks with the current certificate
        (mutual TLS when the link is encrypted, the request's signature in any case)."""
        endpoint = self._renewal_endpoint(self.ms_encryption)
        context = self.client_ssl_context(present_certificate=True) if endpoint.tls else None

        def another() -> bool:
            count = len(self.link.addresses())
            asked = self._ms if self._renewal_ms is None else self._renewal_ms
            self._renewal_ms = (asked + 1) % count
            return count > 1

        answer = await ask_to_sign(
            self.config.name,
            endpoint,
            request,
            ssl_context=context,
            trust_dir=str(self.config.trust_store) if self.config.trust_store else None,
            another=another,
        )
        trust = answer.get("trust")
        if isinstance(trust, dict) and self.config.trust_store is not None:
            self.install_trust(trust, authenticated=endpoint.tls)
        return answer

    async def keep_trust_fresh(self) -> None:
        """CRLs are signed, so they may come from anywhere: when this server's are about to
        expire (it was cut off from the management server for days), it fetches fresh ones
        over a connection that checks the management server's chain but no CRL, since an
        expired CRL would refuse every peer, the management server too."""
        trust_dir = self.config.trust_store
        if trust_dir is None:
            return
        material = self.trust()
        # Also while renewals fail: the management server may refuse this server's
        # certificate because it was revoked, which only a fresh CRL tells it.
        failing = self.renewal is not None and self.renewal.state.failures > 0
        if not material.crl_files or not (failing or crls_stale(material, utcnow())):
            return
        endpoint = self._management_endpoint(self.ms_encryption)
        context = (
            client_context(TrustMaterial(trust_dir, material.ca_files, ()), self.config.policy)
            if endpoint.tls
            else None
        )
        async with open_session({endpoint.host: endpoint.address}, timeout=5) as session:
            try:
                url = f"{'https' if endpoint.tls else 'http'}://{endpoint.host}:{endpoint.port}"
                async with session.get(
                    url + "/api/v1/crls", ssl=context if context is not None else False
                ) as response:
                    text = await response.text() if response.status == 200 else ""
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("%s: cannot fetch fresh CRLs: %s", self.config.name, exc)
                return
        pems = [
            "-----BEGIN X509 CRL-----" + part for part in text.split("-----BEGIN X509 CRL-----")[1:]
        ]
        install_trust_payload(
            trust_dir, {"crls": pems}, log_as=self.config.name, authenticated=False
        )
        if self.tls is not None and self.tls.changed():
            self.tls.reload()
        self.reload_other_contexts()

    async def set_cameras(self, cams: list[dict[str, Any]]) -> None:
        self.camera_config = cams

    @abc.abstractmethod
    async def reconcile_listeners(self) -> None:
        """Bring the listeners in line with the encryption settings."""

    @abc.abstractmethod
    def encrypted_now(self) -> bool:
        """Whether this server's client-facing listener speaks TLS right now."""

    # -- heartbeats ----------------------------------------------------------------------

    def heartbeat_body(self) -> dict[str, Any]:
        return {
            "role": self.config.role.value,
            "host": self.config.host,
            "address": self.config.address,
            "ports": self.config.ports,
            "readiness": self.readiness.as_json(utcnow()),
            "encrypted_now": self.encrypted_now(),
            "registration_key": self.link.registration_key or "",
            "config_digest": self.config_digest,
            "renewal": self.renewal.state.as_json() if self.renewal else None,
        }

    async def heartbeat_once(self, session: Any) -> None:
        tls = self.ms_encryption
        asked = self._ms
        endpoint = self._management_endpoint(tls)
        # Every server proves who it is on the encrypted management link.
        context = self.client_ssl_context(present_certificate=self.tls is not None) if tls else None
        path = f"/api/v1/servers/{self.config.name}/heartbeat"
        body = self.heartbeat_body()
        try:
            config = await call_json(
                session,
                endpoint,
                "POST",
                path,
                ssl_context=context,
                body=body,
                trust_dir=str(self.config.trust_store) if self.config.trust_store else None,
                headers=None if tls else self._signature(path, body),
            )
        except PlaintextToTlsPort:
            # The management server turned encryption on: follow it (never the other way
            # round without being told over the encrypted link).
            log.info(
                "%s: the management server now speaks TLS; switching the link", self.config.name
            )
            self.ms_encryption = True
            return
        except TlsToPlaintextPort as exc:
            if self._plaintext_announced:
                log.info(
                    "%s: the management server now speaks plaintext, as it announced over "
                    "TLS; switching the link",
                    self.config.name,
                )
                self.ms_encryption = False
                return
            self._refused(
                str(exc) + " (staying encrypted: a plaintext management link is refused "
                "unless the management server announced it over TLS)"
            )
            return
        except ConnectionFailed as exc:
            if not self._next_management(str(exc), asked):
                self._refused(str(exc))
            return
        except ApiError as exc:
            self._refused(str(exc))
            return
        if self.last_refusal is not None:
            log.info("%s: registered with the management server again", self.config.name)
        self.last_refusal = None
        if isinstance(config, dict):
            # Remembered because the management server switches its listener a moment after
            # announcing it: a plaintext heartbeat in between meets TLS and follows it back
            # up, and only this announcement lets the link come down again afterwards.
            if tls and config.get("ms_encryption") is False:
                self._plaintext_announced = True
            elif config.get("ms_encryption") is True:
                self._plaintext_announced = False
            if config.get("unchanged") is True and config.get("config_digest") == (
                self.config_digest or None
            ):
                # Nothing new: only what a configuration would retry (a listener that could
                # not switch yet, say) runs again.
                async with self._config_lock:
                    await self.reconcile_listeners()
            else:
                await self.apply_config(config, authenticated=tls)
        self.registered.set()

    def _signature(self, path: str, body: dict[str, Any]) -> dict[str, str] | None:
        """On a plaintext link, a server without the shared registration key (one that
        joined with a token) signs its heartbeat with its certificate's key
        (watchkeep.servers._signed): nothing secret crosses the network."""
        if self.link.registration_key or self.config.key is None or self.config.certificate is None:
            return None
        from watchkeep.pki import load_certificate, load_private_key
        from watchkeep.servers._signed import sign_request

        try:
            stamp = (self.config.key.stat().st_mtime_ns, self.config.certificate.stat().st_mtime_ns)
            if self._signer is None or self._signer[0] != stamp:
                key = load_private_key(self.config.key)
                self._signer = (stamp, key, load_certificate(self.config.certificate))
        except (OSError, WatchkeepError) as exc:
            self._refused(f"cannot sign the heartbeat with {self.config.key}: {exc}")
            return None
        _stamp, key, cert = self._signer
        return sign_request(key, cert, "POST", path, body, utcnow())

    def _refused(self, message: str) -> None:
        if message != self.last_refusal:
            log.error("%s: %s", self.config.name, message)
        self.last_refusal = message

    async def heartbeat_loop(self) -> None:
        hosts = {host: address for host, address, _ in self.link.addresses()}
        async with open_session(hosts, timeout=5) as session:
            while not self.stopping.is_set():
                try:
                    await self.heartbeat_once(session)
                except Exception as exc:  # the link must outlive any one answer
                    # A heartbeat loop that died would leave the server silently unregistered.
                    log.error(
                        "%s: heartbeat failed (%s: %s); trying again",
                        self.config.name,
                        type(exc).__name__,
                        exc,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.config.heartbeat_interval)


def config_order(config: dict[str, Any]) -> tuple[str, int] | None:
    """Where a configuration stands among those of its management server: [process, number]
    (see management._pushes.Answer), or None when it does not say."""
    order = config.get("config_order")
    if (
        isinstance(order, list)
        and len(order) == 2
        and isinstance(order[0], str)
        and isinstance(order[1], int)
        and not isinstance(order[1], bool)
    ):
        return order[0], order[1]
    return None


def superseded(order: tuple[str, int] | None, taken: tuple[str, int] | None) -> bool:
    """Whether a configuration at ``order`` is older than the one taken: only one from the
    same management server process can be told apart (another process numbers its own)."""
    return order is not None and taken is not None and order[0] == taken[0] and order[1] < taken[1]
