"""Listeners that can switch between plaintext and TLS while the server runs.

aiohttp's own sites hide the handshake settings; here every listener accepts connections
itself, so that it can bound them:

* each TLS handshake runs on its own, with a timeout (one slow client never blocks
  another, and a connection that never finishes its handshake is dropped);
* each request must arrive whole, head and body, within ``request_timeout`` of its first
  byte: a client that sends ``Content-Length: 1000`` and then nothing is dropped, as one
  that never finishes its handshake is;
* at most ``max_connections`` connections are open at once, counted from ``accept()``
  (half-open TLS connections included), so idle sockets cannot exhaust the process's file
  descriptors, and at most ``max_connections_per_address`` from one client address, so one
  machine cannot hold every slot. At a limit a new connection takes the place of a
  connection that serves no request, as nginx reclaims idle keep-alive connections:
  whoever holds the slots with idle sockets cannot lock other clients out.

A connection *serves a request* when its request has arrived in full and the application
is answering it (a live stream, for hours): only those are never closed to make room.
Everything else gives way, in this order: connections that never completed a request
(still in their handshake, silent, or stuck in their first request's head or body),
oldest first; then those that did, least recently active first; and only then those that
presented a client certificate of the site (the servers' own management link), least
recently active first. So anonymous clients cannot starve the site's own servers. Only
when every candidate serves a request is the new one reset at once. Each of these is
logged, once per interval whatever the rate.

A listener is restarted in place when its server's encryption is turned on or off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "REQUEST_TIMEOUT",
    "Listener",
    "ListenerLimits",
]

HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
# A quarter of the slots: filling a listener takes four machines at least. The largest
# legitimate user of one address is a mobile server relaying its viewers' streams to a
# recording server (one connection a stream); a site with more viewers than that per
# recording server raises it.
MAX_CONNECTIONS_PER_ADDRESS = 128
# A connection waiting for its next request (after its handshake, or between requests) is
# closed after this long: nginx's keep-alive default. A stream in progress is not idle.
IDLE_TIMEOUT = 75.0
# From a request's first byte until its body is in: the largest body watchkeep takes is
# 1 MiB (the management API), seconds on the slowest link a site would use. Apache's
# mod_reqtimeout and nginx's client_header/body_timeout are of this order (20-60 s).
REQUEST_TIMEOUT = 30.0
BACKLOG = 1024
# How often the limit being reached is logged while it lasts (a flood must not flood the log).
LIMIT_LOG_INTERVAL = 10.0
# After EMFILE/ENFILE, accept again after this long (asyncio's own servers wait 1 s too).
ACCEPT_RETRY_DELAY = 1.0
log = logging.getLogger("watchkeep.servers")


@dataclass(frozen=True)
class ListenerLimits:
    """What one listener allows: ``[server] max_connections``, ``handshake_timeout``,
    ``idle_timeout``, ``request_timeout`` and ``max_connections_per_address``."""

    max_connections: int = MAX_CONNECTIONS
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ValueError("max_connections and max_connections_per_address must be at least 1")
        if not (self.handshake_timeout > 0 and self.idle_timeout > 0 and self.request_timeout > 0):
            raise ValueError(
                "handshake_timeout, idle_timeout and request_timeout must be positive seconds"
            )

    def runner(self, app: web.Application) -> web.AppRunner:
        """The runner of an application served by listeners with these limits (and with
        the headers every answer of the site carries, `security_headers`)."""
        if security_headers not in app.on_response_prepare:
            app.on_response_prepare.append(security_headers)
        return web.AppRunner(app, access_log=None, keepalive_timeout=self.idle_timeout)


# Two years, as Mozilla's and hstspreload.org's guidance asks. Once a browser has reached a
# host over HTTPS it refuses that host in plaintext (every port) this long: a server whose
# encryption is turned off again is out of such a browser's reach, as it should be.
HSTS_MAX_AGE = 63_072_000


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """What every answer of every listener of the site says to a browser: never sniff a
    content type, never show this in a frame, and, over TLS, never come back in plaintext
    (Strict-Transport-Security, which browsers take from HTTPS answers only)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}")


class Listener:
    def __init__(
        self,
        server: str,
        name: str,
        runner: web.AppRunner,
        address: str,
        port: int,
        *,
        limits: ListenerLimits | None = None,
    ) -> None:
        self.server = server
        self.name = name
        self.runner = runner
        self.address = address
        self.port = port
        self.limits = limits or ListenerLimits()
        self.ssl_context: ssl.SSLContext | None = None
        self.refused = 0  # connections closed at once: a limit reached, all busy
        self.evicted = 0  # connections serving no request, closed to make room
        self.timed_out = 0  # connections closed because a request did not arrive in time
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # Every accepted connection until it ends, oldest first (a dict keeps the order).
        self._slots: dict[_Slot, None] = {}
        self._per_address: dict[str, int] = {}
        self._logged: dict[str, float] = {}  # when each kind of limit warning was last logged

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    @property
    def running(self) -> bool:
        return self._socket is not None

    @property
    def connections(self) -> int:
        """Connections open now, those still in their TLS handshake included."""
        return len(self._slots)

    def connections_from(self, address: str) -> int:
        return self._per_address.get(address, 0)

    async def start(self, ssl_context: ssl.SSLContext | None) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self._socket = socket.create_server(
            (self.address, self.port), family=family, backlog=BACKLOG
        )
        self._socket.setblocking(False)
        self.ssl_context = ssl_context
        self._accepting = asyncio.create_task(self._accept_loop(self._socket, ssl_context))
        log.info(
            "%s: %s listener on %s://%s:%d",
            self.server,
            self.name,
            "https" if ssl_context else "http",
            self.address,
            self.port,
        )

    async def _accept_loop(self, listening: socket.socket, context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "%s: %s listener cannot accept: %s; accepting again in %.0f s",
                        self.server,
                        self.name,
                        exc.strerror,
                        ACCEPT_RETRY_DELAY,
                    )
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                # Anything else (a peer that reset before accept) concerns that peer only.
                continue
            who = _address(peer)
            if not self._make_room(conn, who):
                continue
            now = time.monotonic()
            slot = _Slot(who, now, now)
            self._slots[slot] = None
            self._per_address[who] = self._per_address.get(who, 0) + 1
            slot.task = asyncio.create_task(self._serve(conn, context, slot))

    def _make_room(self, conn: socket.socket, who: str) -> bool:
        """Whether a connection from ``who`` may be served, after closing one to make room
        if a limit is reached; if not, it is reset."""
        limits = self.limits
        if self._per_address.get(who, 0) >= limits.max_connections_per_address:
            victim = self._victim(who)
            if victim is None:
                self._refuse(conn, who, "refuse-address")
                return False
            self._evict(victim, who, "evict-address")
        if len(self._slots) >= limits.max_connections:
            victim = self._victim()
            if victim is None:
                self._refuse(conn, who, "refuse")
                return False
            self._evict(victim, who, "evict")
        return True

    def _release(self, slot: _Slot) -> None:
        if slot in self._slots:
            del self._slots[slot]
            left = self._per_address[slot.peer] - 1
            if left:
                self._per_address[slot.peer] = left
            else:
                del self._per_address[slot.peer]

    def _victim(self, peer: str | None = None) -> _Slot | None:
        """The connection to close for a newcomer (of ``peer``'s, if given): the oldest that
        never completed a request, else the least recently active anonymous one, else the
        least recently active one with a site client certificate; never one serving."""
        best: _Slot | None = None
        for slot in self._slots:
            if (peer is not None and slot.peer != peer) or slot.serving():
                continue
            if not slot.authenticated and slot.requests == 0:
                return slot  # the slots are in order of acceptance: this is the oldest
            if best is None or (slot.authenticated, slot.active) < (
                best.authenticated,
                best.active,
            ):
                best = slot
        return best

    def _evict(self, victim: _Slot, newcomer: str, kind: str) -> None:
        self._release(victim)
        self.evicted += 1
        victim.close()
        if kind == "evict-address":
            limit = f"its limit of connections from one address ({victim.peer}: " + (
                f"{self.limits.max_connections_per_address} open)"
            )
            setting = "max_connections_per_address"
        else:
            limit = f"its connection limit ({self.limits.max_connections} open)"
            setting = "max_connections"
        self._warn(
            kind,
            setting,
            "is at %s; closing connections that serve no request to make room (last: one "
            "from %s, open %.0f s, %s, for one from %s; %d closed so far)",
            limit,
            victim.peer,
            time.monotonic() - victim.accepted,
            victim.describe(),
            newcomer,
            self.evicted,
        )

    def _refuse(self, conn: socket.socket, who: str, kind: str) -> None:
        self.refused += 1
        # SO_LINGER 0: a reset, so the refused client learns at once instead of waiting.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        if kind == "refuse-address":
            limit = f"its limit of connections from one address ({who}: " + (
                f"{self.limits.max_connections_per_address} open"
            )
            setting = "max_connections_per_address"
        else:
            limit = f"its connection limit ({self.limits.max_connections} open"
            setting = "max_connections"
        self._warn(
            kind,
            setting,
            "reached %s, every one serving a request); refusing new connections (last from "
            "%s, %d refused so far)",
            limit,
            who,
            self.refused,
        )

    def _timed_out(self, slot: _Slot) -> None:
        self._release(slot)
        self.timed_out += 1
        slot.close()
        self._warn(
            "request-timeout",
            "request_timeout",
            "closed a connection from %s whose request did not arrive in full within %.0f s "
            "of its first byte (%d closed so far)",
            slot.peer,
            self.limits.request_timeout,
            self.timed_out,
        )

    def _warn(self, kind: str, setting: str, what: str, *args: object) -> None:
        """Log ``what`` about this listener and the setting that governs it, once per
        LIMIT_LOG_INTERVAL for each ``kind``: a flood must not flood the log."""
        now = time.monotonic()
        if now - self._logged.get(kind, -LIMIT_LOG_INTERVAL) >= LIMIT_LOG_INTERVAL:
            self._logged[kind] = now
            log.warning(
                "%s: %s listener on %s:%d " + what + "; raise [server] %s if this is "
                "legitimate load",
                self.server,
                self.name,
                self.address,
                self.port,
                *args,
                setting,
            )

    async def _serve(
        self, conn: socket.socket, context: ssl.SSLContext | None, slot: _Slot
    ) -> None:
        """Hand one accepted connection to the application, after its TLS handshake."""
        loop = asyncio.get_running_loop()
        assert self.runner.server is not None
        handler = self.runner.server

        def protocol() -> asyncio.Protocol:
            slot.protocol = _Counted(
                handler(), slot, self._release, self.limits.request_timeout, self._timed_out
            )
            return slot.protocol

        try:
            await loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.limits.handshake_timeout if context else None,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            # A failed or abandoned handshake: the client sees the connection close; the
            # server has nothing to say about it beyond what asyncio logs at debug level.
            self._release(slot)
            conn.close()
        except asyncio.CancelledError:
            # Stopped, or closed in its handshake to make room: a transport made just
            # before must not outlive the slot.
            self._release(slot)
            if slot.transport is not None:
                slot.transport.abort()
            conn.close()
            raise
        finally:
            slot.task = None

    async def stop(self) -> None:
        if self._socket is None:
            return
        listening, self._socket = self._socket, None
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        listening.close()
        # Connections accepted under the old setting must not outlive it: a plaintext
        # stream must not keep flowing after its server's encryption was turned on.
        for slot in list(self._slots):
            if slot.task is not None:
                slot.task.cancel()
            elif slot.transport is not None:
                slot.transport.close()

    async def restart(self, ssl_context: ssl.SSLContext | None) -> None:
        await self.stop()
        await self.start(ssl_context)


def _address(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


@dataclass(eq=False)
class _Slot:
    """One accepted connection, from ``accept()`` to its end."""

    peer: str
    accepted: float  # time.monotonic()
    active: float  # time.monotonic() when it last received bytes
    task: asyncio.Task[None] | None = None  # set while the handshake runs
    transport: asyncio.Transport | None = None  # set once the application has it
    protocol: _Counted | None = field(default=None, repr=False)
    authenticated: bool = False  # presented a client certificate the server verified
    requests: int = 0  # requests received in full

    def serving(self) -> bool:
        """Whether a request received in full is being answered (or waits, pipelined):
        never closed for room."""
        if self.task is not None or self.protocol is None:
            return False  # still in its TLS handshake
        return self.protocol.serving()

    def describe(self) -> str:
        if self.task is not None or self.protocol is None:
            return "in its TLS handshake"
        if self.protocol.receiving_since is not None:
            return "its request not received in full"
        return f"idle after {self.requests} requests"

    def close(self) -> None:
        """End the connection now (a reset: a client that held the slot idle is owed no
        goodbye, and an orderly TLS close could wait on it)."""
        if self.task is not None:
            self.task.cancel()
        elif self.transport is not None:
            self.transport.abort()


class _Counted(asyncio.Protocol):
    """The application's protocol, seen through: the slot is released when its connection
    ends, and each request is timed from its first byte until it has arrived in full
    (aiohttp's handlers have slots, so they are wrapped rather than patched).

    What this reads of aiohttp 3.14's RequestHandler (``_request_count``: requests parsed;
    ``_messages``: parsed, not yet handled, each with its body's stream;
    ``_request_in_progress``; ``_upgraded``: a WebSocket, no more requests) is read here
    only, each with a default that keeps a connection counted as serving.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        slot: _Slot,
        release: Callable[[_Slot], None],
        request_timeout: float,
        timed_out: Callable[[_Slot], None],
    ) -> None:
        self.inner = inner
        self._slot = slot
        self._release = release
        self._request_timeout = request_timeout
        self._timed_out = timed_out
        self.receiving_since: float | None = None  # a request's first byte, until it is in
        self._body: Any = None  # the stream of the newest request's body until it is in
        self._deadline: asyncio.TimerHandle | None = None

    def serving(self) -> bool:
        if self.receiving_since is not None:
            return False  # a request that has not arrived in full serves nothing yet
        inner = self.inner
        return bool(getattr(inner, "_request_in_progress", True)) or bool(
            getattr(inner, "_messages", ())
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._slot.transport = cast(asyncio.Transport, transport)
        # With the TLS context's client authentication optional (the management API), a
        # certificate here was verified against the site CA in the handshake.
        self._slot.authenticated = bool(transport.get_extra_info("peercert"))
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._received()
        self._release(self._slot)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        slot = self._slot
        slot.active = time.monotonic()
        before = getattr(inner, "_request_count", 0)
        pending = self._body  # a body that had not arrived in full before these bytes
        inner.data_received(data)
        if getattr(inner, "_upgraded", False):
            self._body = None
            self._received()  # a WebSocket now: frames, not requests
            return
        if pending is not None and not self._incomplete(pending):
            slot.requests += 1
            self._body = None
        parsed = getattr(inner, "_request_count", 0) - before
        if parsed > 0:
            messages = getattr(inner, "_messages", ())
            newest = messages[-1][1] if messages else None
            self._body = newest if self._incomplete(newest) else None
            slot.requests += parsed - (1 if self._body is not None else 0)
        if self._body is not None or (parsed == 0 and pending is None):
            # A body still to come, or the rest of a request's head.
            self._receiving(slot.active)
        else:
            self._received()

    @staticmethod
    def _incomplete(body: Any) -> bool:
        return body is not None and not body.is_eof()

    def _receiving(self, now: float) -> None:
        if self.receiving_since is None:
            self.receiving_since = now
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._request_timeout, self._expire)

    def _received(self) -> None:
        self.receiving_since = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.receiving_since is not None:
            self._timed_out(self._slot)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
