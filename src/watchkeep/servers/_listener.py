"""Listeners that can switch between plaintext and TLS while the server runs.

aiohttp's own sites hide the handshake settings; here every listener accepts connections
itself, so that it can bound them:

* each TLS handshake runs on its own, with a timeout (one slow client never blocks
  another, and a connection that never finishes its handshake is dropped);
* at most ``max_connections`` connections are open at once, counted from ``accept()``
  (half-open TLS connections included), so idle sockets cannot exhaust the process's file
  descriptors; past the limit a new connection is closed at once and the server says so
  in its log.

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
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["HANDSHAKE_TIMEOUT", "IDLE_TIMEOUT", "MAX_CONNECTIONS", "Listener", "ListenerLimits"]

HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
# A connection waiting for its next request (after its handshake, or between requests) is
# closed after this long: nginx's keep-alive default. A stream in progress is not idle.
IDLE_TIMEOUT = 75.0
BACKLOG = 1024
# How often the limit being reached is logged while it lasts (a flood must not flood the log).
LIMIT_LOG_INTERVAL = 10.0
# After EMFILE/ENFILE, accept again after this long (asyncio's own servers wait 1 s too).
ACCEPT_RETRY_DELAY = 1.0
log = logging.getLogger("watchkeep.servers")


@dataclass(frozen=True)
class ListenerLimits:
    """What one listener allows: ``[server] max_connections``, ``handshake_timeout`` and
    ``idle_timeout``."""

    max_connections: int = MAX_CONNECTIONS
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not (self.handshake_timeout > 0 and self.idle_timeout > 0):
            raise ValueError("handshake_timeout and idle_timeout must be positive seconds")

    def runner(self, app: web.Application) -> web.AppRunner:
        """The runner of an application served by listeners with these limits."""
        return web.AppRunner(app, access_log=None, keepalive_timeout=self.idle_timeout)


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
        self.refused = 0  # connections closed at once because the limit was reached
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.BaseTransport] = set()
        self._count = 0
        self._limit_logged = -LIMIT_LOG_INTERVAL

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    @property
    def running(self) -> bool:
        return self._socket is not None

    @property
    def connections(self) -> int:
        """Connections open now, those still in their TLS handshake included."""
        return self._count

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
            if self._count >= self.limits.max_connections:
                self._refuse(conn, peer)
                continue
            self._count += 1
            task = asyncio.create_task(self._serve(conn, context))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _refuse(self, conn: socket.socket, peer: Any) -> None:
        self.refused += 1
        # SO_LINGER 0: a reset, so the refused client learns at once instead of waiting.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        now = time.monotonic()
        if now - self._limit_logged >= LIMIT_LOG_INTERVAL:
            self._limit_logged = now
            log.warning(
                "%s: %s listener on %s:%d reached its connection limit (%d open); refusing "
                "new connections (last from %s, %d refused so far); raise [server] "
                "max_connections if this is legitimate load",
                self.server,
                self.name,
                self.address,
                self.port,
                self.limits.max_connections,
                peer[0] if isinstance(peer, tuple) else peer,
                self.refused,
            )

    async def _serve(self, conn: socket.socket, context: ssl.SSLContext | None) -> None:
        """Hand one accepted connection to the application, after its TLS handshake."""
        loop = asyncio.get_running_loop()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._count -= 1

        assert self.runner.server is not None
        handler = self.runner.server

        def protocol() -> asyncio.Protocol:
            return _Counted(handler(), self._open, release)

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
            release()
            conn.close()
        except asyncio.CancelledError:
            release()
            conn.close()
            raise

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
        for task in list(self._pending):
            task.cancel()
        # Connections accepted under the old setting must not outlive it: a plaintext
        # stream must not keep flowing after its server's encryption was turned on.
        for transport in list(self._open):
            transport.close()

    async def restart(self, ssl_context: ssl.SSLContext | None) -> None:
        await self.stop()
        await self.start(ssl_context)


class _Counted(asyncio.Protocol):
    """The application's protocol, seen through: ``release`` runs when its connection ends
    (aiohttp's handlers have slots, so they are wrapped rather than patched)."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        open_transports: set[asyncio.BaseTransport],
        release: Callable[[], None],
    ) -> None:
        self._inner = inner
        self._open_transports = open_transports
        self._release = release
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._open_transports.add(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open_transports.discard(self._transport)
        self._release()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
