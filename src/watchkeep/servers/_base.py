"""What every watchkeep server process shares: start-up checks, readiness, certificate
reload (file changes and SIGHUP), signals and an orderly stop."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography import x509

from watchkeep._clock import utcnow
from watchkeep._files import atomic_write
from watchkeep.errors import CertificateRuleViolation, WatchkeepError
from watchkeep.pki import fingerprint, san_dns_names
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._expiry import (
    ExpiryWatch,
    WatchedCertificate,
    inventory_certificates,
    metrics_text,
)
from watchkeep.servers._gc import keep_collections_short
from watchkeep.servers._renewal import SelfRenewal, rejoin_command
from watchkeep.site import CertificateStatus, Readiness, RuleBreach
from watchkeep.tls import (
    ClientAuth,
    ReloadableServerContext,
    ServerIdentity,
    TrustMaterial,
    check_server_identity,
    client_context,
)

# utcnow is imported from here by the server modules.
__all__ = ["ServerProcess", "certificate_status", "configure_logging", "utcnow"]

log = logging.getLogger("watchkeep.servers")
RELOAD_INTERVAL = 2.0
# At most one line per this long for each kind of client fault (a flood must not flood the log).
CLIENT_FAULT_LOG_INTERVAL = 10.0
EXPIRY_CHECK_INTERVAL = 60.0


def configure_logging(name: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_ClientFaultsInOneLine())


class _ClientFaultsInOneLine(logging.Filter):
    """aiohttp logs what a client does wrong as an error with a traceback of 20-40 lines: a
    malformed request (a 64 KiB header, 1000 headers: answered with 400) and a connection
    that ends while its request is handled (reset, closed, or cut at ``request_timeout``).
    A client controls how often either happens, so each becomes one warning line, and at
    most one per ``interval`` for each kind, saying how many it stands for: a hostile client
    can fill neither the log nor the disk. Anything else passes untouched."""

    def __init__(self, interval: float = CLIENT_FAULT_LOG_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}  # kind -> when its last line was let through
        self._quiet: dict[str, int] = {}  # kind -> events since then that were not logged

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        if isinstance(error, HttpProcessingError):
            kind = "malformed"
            record.msg = "malformed request from %s refused with %s: %s"
            record.args = (remote, error.code, str(error.message).splitlines()[0][:200])
        elif isinstance(error, ConnectionError) or _written_after_close(error):
            kind = "lost"
            record.msg = "a client's connection (%s) ended while its request was handled: %s"
            record.args = (remote, str(error)[:200] or type(error).__name__)
        else:
            return True
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return False
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            record.msg += " (and %d more like it in the last %.0f s)"
            record.args = (*record.args, quiet, self.interval)
        record.exc_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _written_after_close(error: BaseException | None) -> bool:
    """uvloop's error for a write to a connection whose transport was closed under the
    answer (the client went while it was written): the same event as a reset."""
    return isinstance(error, RuntimeError) and "the handler is closed" in str(error)


def certificate_status(leaf: x509.Certificate) -> CertificateStatus:
    return CertificateStatus(
        sha256_fingerprint=fingerprint(leaf),
        serial=format(leaf.serial_number, "x"),
        not_after=leaf.not_valid_after_utc,
        hosts=san_dns_names(leaf),
        not_before=leaf.not_valid_before_utc,
    )


class ServerProcess(abc.ABC):
    """Base of the management, recording and mobile servers."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stopping = asyncio.Event()
        self.tls: ReloadableServerContext | None = None
        self.readiness = Readiness(None, ())
        self._client_auth = ClientAuth.NONE
        self._unprepared: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._client_contexts: dict[bool, tuple[object, ssl.SSLContext]] = {}
        self.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.expiry = ExpiryWatch(config.warn_days, announced=self._load_json("expiry.json"))
        self.renewal = self._self_renewal()

    # -- its own renewals (servers._renewal) -----------------------------------------------

    def _self_renewal(self) -> SelfRenewal | None:
        identity = self.config.identity
        if identity is None:
            return None
        return SelfRenewal(
            server=self.config.name,
            role=self.config.role.value,
            host=self.config.host,
            identity=identity,
            trust=self.trust,
            sign=self.sign_renewal,
            on_renewed=self.on_renewed,
            state_file=self.config.data_dir / "renewal.json",
            audience=self.renewal_audience,
            renew_at=self.config.renew_at,
            jitter=self.config.renew_jitter,
        )

    @abc.abstractmethod
    async def sign_renewal(self, request: dict[str, Any]) -> dict[str, Any]:
        """Have the site CA sign a renewal request (servers._renewal.renewal_request)."""

    @abc.abstractmethod
    def renewal_audience(self) -> str:
        """The host name of the management server that signs this server's renewals."""

    async def keep_trust_fresh(self) -> None:  # noqa: B027 - a hook
        """Before each renewal check: fetch what keeps this server's trust store usable."""

    def on_renewed(self) -> None:
        """A renewed key and chain are in place: serve them now, on new connections."""
        self.reload_now()
        self.reload_other_contexts()

    async def _renewal_loop(self) -> None:
        while not self.stopping.is_set():
            now = utcnow()
            try:
                # Thresholds crossed before the renewal are warned first, each once.
                self.check_expiry(now)
                await self.keep_trust_fresh()
                if self.renewal is not None:
                    await self.renewal.tick(now)
            except Exception as exc:  # the loop that keeps the certificate alive must live on
                log.error(
                    "%s: renewal check failed (%s: %s); trying again",
                    self.config.name,
                    type(exc).__name__,
                    exc,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.renew_check_interval)

    # -- certificates --------------------------------------------------------------------

    def trust(self) -> TrustMaterial:
        if self.config.trust_store is None:
            return TrustMaterial(Path(), (), ())
        return TrustMaterial.load(self.config.trust_store)

    def check_certificate_at_start(self, client_auth: str = ClientAuth.NONE) -> None:
        """Refuse to start with a certificate no peer would accept (raises with one line).

        A server that is not prepared yet (its certificate files are not there, or its
        trust store holds no CA) starts in plaintext and reports why: enabling its
        encryption is refused until it is prepared, and it picks the files up once they
        appear (or on SIGHUP), without a restart.
        """
        self._client_auth = client_auth
        identity = self.config.identity
        if identity is None:
            log.warning(
                "%s: no [tls] certificate configured; encryption cannot be turned on",
                self.config.name,
            )
            self.readiness = self.compute_readiness()
            return
        if self._not_prepared(identity) is None:
            self._open_tls(identity)
        else:
            self._try_open_tls()
        self.readiness = self.compute_readiness()

    def _not_prepared(self, identity: ServerIdentity) -> str | None:
        if not identity.chain.exists() and not identity.key.exists():
            return f"no certificate is installed ({identity.chain} does not exist)"
        if not self.trust().ca_files:
            return f"the trust store {self.config.trust_store} holds no CA certificate"
        return None

    def _open_tls(self, identity: ServerIdentity) -> None:
        self.tls = ReloadableServerContext(
            identity,
            self.config.policy,
            client_auth=self._client_auth,
            trust_dir=self.config.trust_store,
            on_reload=lambda _leaf: self.on_certificate_reloaded(),
        )

    def _try_open_tls(self) -> None:
        """While the server has no TLS context: build it if its files are now in place."""
        identity = self.config.identity
        if identity is None or self.tls is not None:
            return
        reason = self._not_prepared(identity)
        if reason is None:
            try:
                self._open_tls(identity)
            except (WatchkeepError, OSError, ValueError, ssl.SSLError) as exc:
                reason = str(exc)
            else:
                log.info("%s: certificate and trust store in place", self.config.name)
        if reason is not None and reason != self._unprepared:
            log.warning("%s: encryption cannot be turned on yet: %s", self.config.name, reason)
        self._unprepared = reason

    def compute_readiness(self) -> Readiness:
        trust = self.trust()
        try:
            trusted = tuple(fingerprint(c) for c in trust.certificates())
        except (OSError, ValueError):
            trusted = ()
        identity = self.config.identity
        if identity is None:
            return Readiness(
                None,
                trusted,
                (
                    RuleBreach(
                        "cert.chain",
                        "no certificate is configured",
                        f"watchkeep cert issue --role {self.config.role.value} --host "
                        f"{self.config.host} --out DIR, then set [tls] certificate/key/trust_store "
                        f"in {self.config.path}",
                    ),
                ),
            )
        if not identity.chain.exists() and not identity.key.exists():
            return Readiness(
                None,
                trusted,
                (
                    RuleBreach(
                        "cert.chain",
                        f"no certificate is installed ({identity.chain} does not exist)",
                        f"watchkeep cert issue --role {self.config.role.value} --host "
                        f"{self.config.host} --ip {self.config.address} --out "
                        f"{identity.chain.parent}",
                    ),
                ),
            )
        problems: list[RuleBreach] = []
        status = None
        try:
            status = certificate_status(check_server_identity(identity, trust))
        except CertificateRuleViolation as exc:
            # The server reports about itself: the breach goes out without a server name.
            problems.append(replace(exc.breach, server=""))
        except WatchkeepError as exc:
            problems.append(RuleBreach("cert.chain", exc.describe(), exc.fix or ""))
        if status is None and self.tls is not None:
            status = certificate_status(self.tls.certificate)
        return Readiness(status, trusted, tuple(problems))

    def on_certificate_reloaded(self) -> None:
        self.readiness = self.compute_readiness()

    def server_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.front if self.tls is not None else None

    def client_ssl_context(self, *, present_certificate: bool) -> ssl.SSLContext:
        """A context that verifies peers against this server's trust store, presenting its
        own certificate if asked: the same one while the files it is made of are unchanged.
        aiohttp pools connections per context, so a new context for every heartbeat opened a
        new connection for every heartbeat, and each sat idle in the pool, holding a slot of
        the management server's listener, until a keep-alive timeout ended it."""
        identity = self.config.identity if present_certificate else None
        trust = self.trust()
        stamp = (
            trust.stamp(),
            *(_file_stamp(p) for p in ((identity.chain, identity.key) if identity else ())),
        )
        made = self._client_contexts.get(present_certificate)
        if made is not None and made[0] == stamp:
            return made[1]
        context = client_context(trust, self.config.policy, identity=identity)
        self._client_contexts[present_certificate] = (stamp, context)
        return context

    async def _reload_loop(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RELOAD_INTERVAL)
            if self.tls is None:
                self._try_open_tls()
                self.readiness = self.compute_readiness()
            elif self.tls.changed():
                self.tls.reload()
                self.readiness = self.compute_readiness()
                self.check_expiry()
            self.reload_other_contexts()

    def reload_other_contexts(self) -> None:  # noqa: B027 - a hook; most servers have one context
        """Servers with more than one TLS context (the recording server's control link)
        reload the others here when their files change."""

    def reload_now(self) -> None:
        if self.tls is not None:
            self.tls.reload()
        else:
            self._try_open_tls()
        self.readiness = self.compute_readiness()

    # -- expiry ---------------------------------------------------------------------------

    def watched_certificates(self) -> list[WatchedCertificate]:
        """This server's certificate and the CAs in its trust store (cert.expiry_warning),
        and, on the management server that holds the CA, every other certificate the CA
        issued."""
        found = []
        c = self.config
        if self.tls is not None:
            found.append(
                WatchedCertificate.of(
                    self.tls.certificate,
                    kind="server",
                    server=c.name,
                    role=c.role.value,
                    host=c.host,
                )
            )
        with contextlib.suppress(OSError, ValueError):
            for ca in self.trust().certificates():
                found.append(
                    WatchedCertificate.of(
                        ca,
                        kind="ca",
                        server=c.name,
                        role="ca",
                        host=ca.subject.rfc4514_string(),
                    )
                )
        if c.ca_home is not None:
            own = {w.serial for w in found if w.kind == "server"}
            found += [w for w in inventory_certificates(c.ca_home) if w.serial not in own]
        return found

    def check_expiry(self, now: dt.datetime | None = None) -> None:
        own_fix = None
        c = self.config
        if self.renewal is not None and c.ca_home is None:
            # It renews itself from another machine's CA: that it has not means the renewal
            # fails (its own lines say why), and `cert renew` there would not reach its files.
            own_fix = (
                f"it renews itself through the management server {self.renewal.audience()} "
                "(its 'renewing its certificate' lines say why it has not); else, on the CA's "
                f"machine: watchkeep cert renew {c.role.value}-{c.host}, and install the new "
                f"files on {c.host}; or join again: {rejoin_command(c.name, c.role.value, c.host)}"
            )
        if self.expiry.check(self.watched_certificates(), now or utcnow(), own_fix=own_fix):
            self._save_json("expiry.json", self.expiry.announced)

    async def _expiry_loop(self) -> None:
        while not self.stopping.is_set():
            self.check_expiry()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), EXPIRY_CHECK_INTERVAL)

    def metrics_certificates(self) -> list[WatchedCertificate]:
        return self.watched_certificates()

    def metrics_extra(self) -> str:
        """More Prometheus text after the certificates' (a server's own counters)."""
        return ""

    async def metrics(self, _request: web.Request) -> web.Response:
        extra = self.metrics_extra() + (self.renewal.metrics() if self.renewal else "")
        text = metrics_text(self.metrics_certificates(), utcnow(), extra)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    # -- state kept across restarts ------------------------------------------------------

    def _load_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.config.data_dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_json(self, name: str, data: dict[str, Any]) -> None:
        atomic_write(self.config.data_dir / name, json.dumps(data, indent=1).encode(), mode=0o600)

    def load_state(self) -> dict[str, Any]:
        return self._load_json("state.json")

    def save_state(self, state: dict[str, Any]) -> None:
        self._save_json("state.json", state)

    # -- life cycle ----------------------------------------------------------------------

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the server's listeners and start its background tasks."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release what start() took; called once, after stopping is set."""

    def log_tasks(self) -> None:
        """What each of the server's tasks awaits now, in its log (``kill -USR1 PID``): for
        a server that runs but does not do what it should."""
        tasks = asyncio.all_tasks()
        lines = [f"{self.config.name}: {len(tasks)} tasks (SIGUSR1)"]
        for task in tasks:
            chain: list[str] = []
            awaited: Any = task.get_coro()
            while awaited is not None and len(chain) < 30:
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                if frame is None:
                    chain.append(type(awaited).__name__)
                    break
                code = frame.f_code
                chain.append(f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})")
                awaited = getattr(awaited, "cr_await", None) or getattr(
                    awaited, "gi_yieldfrom", None
                )
            lines.append(f"  {task.get_name()}: {' -> '.join(chain)}")
        log.warning("\n".join(lines))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_now)
        loop.add_signal_handler(signal.SIGUSR1, self.log_tasks)
        await self.start()
        self.spawn(self._reload_loop())
        self.spawn(self._expiry_loop())
        self.spawn(self._renewal_loop())
        self.spawn(keep_collections_short())
        log.info("%s: %s server ready", self.config.name, self.config.role.value)
        try:
            await self.stopping.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.shutdown()
            log.info("%s: stopped", self.config.name)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (None: it is not there)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
