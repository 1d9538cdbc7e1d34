"""Listeners that can switch between plaintext and TLS while the server runs.

aiohttp's own sites hide the handshake settings; here every listener accepts connections
itself, so that it can bound them:

* each TLS handshake runs on its own, with a timeout (one slow client never blocks
  another, and a connection that never finishes its handshake is dropped);
* at most ``max_connections`` connections are open at once, counted from ``accept()``
  (half-open TLS connections included), so idle sockets cannot exhaust the process's file
  descriptors. At the limit a new connection takes the place of the oldest one that is
  serving no request (still in its handshake, or waiting for a request), as nginx reclaims
  idle keep-alive connections: whoever holds the slots with idle sockets cannot lock other
  clients out. Only when every connection is serving a request is the new one closed at
  once. Either way the server says so in its log.

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
        self.refused = 0  # connections closed at once: the limit reached, all busy
        self.evicted = 0  # connections serving no request, closed to make room
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # Every accepted connection until it ends, oldest first (a dict keeps the order).
        self._slots: dict[_Slot, None] = {}
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
            if len(self._slots) >= self.limits.max_connections:
                victim = self._idlest()
                if victim is None:
                    self._refuse(conn, who)
                    continue
                self._evict(victim, who)
            slot = _Slot(who, time.monotonic())
            self._slots[slot] = None
            slot.task = asyncio.create_task(self._serve(conn, context, slot))

    def _release(self, slot: _Slot) -> None:
        self._slots.pop(slot, None)

    def _idlest(self) -> _Slot | None:
        """The oldest connection serving no request, if any."""
        for slot in self._slots:
            if not slot.serving():
                return slot
        return None

    def _evict(self, victim: _Slot, newcomer: str) -> None:
        self._release(victim)
        self.evicted += 1
        victim.close()
        self._warn(
            "evict",
            "is at its connection limit (%d open); closing the oldest connections that serve "
            "no request to make room (last: one from %s, open %.0f s without a request, for "
            "one from %s; %d closed so far)",
            self.limits.max_connections,
            victim.peer,
            time.monotonic() - victim.accepted,
            newcomer,
            self.evicted,
        )

    def _refuse(self, conn: socket.socket, who: str) -> None:
        self.refused += 1
        # SO_LINGER 0: a reset, so the refused client learns at once instead of waiting.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self._warn(
            "refuse",
            "reached its connection limit (%d open, every one serving a request); refusing "
            "new connections (last from %s, %d refused so far)",
            self.limits.max_connections,
            who,
            self.refused,
        )

    def _warn(self, kind: str, what: str, *args: object) -> None:
        """Log ``what`` about this listener and the fix, once per LIMIT_LOG_INTERVAL for
        each ``kind``: a flood must not flood the log."""
        now = time.monotonic()
        if now - self._logged.get(kind, -LIMIT_LOG_INTERVAL) >= LIMIT_LOG_INTERVAL:
            self._logged[kind] = now
            log.warning(
                "%s: %s listener on %s:%d " + what + "; raise [server] max_connections if "
                "this is legitimate load",
                self.server,
                self.name,
                self.address,
                self.port,
                *args,
            )

    async def _serve(
        self, conn: socket.socket, context: ssl.SSLContext | None, slot: _Slot
    ) -> None:
        """Hand one accepted connection to the application, after its TLS handshake."""
        loop = asyncio.get_running_loop()
        assert self.runner.server is not None
        handler = self.runner.server

        def protocol() -> asyncio.Protocol:
            slot.protocol = _Counted(handler(), slot, self._release)
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
    task: asyncio.Task[None] | None = None  # set while the handshake runs
    transport: asyncio.Transport | None = None  # set once the application has it
    protocol: _Counted | None = field(default=None, repr=False)

    def serving(self) -> bool:
        """Whether a request is being served (or waits, pipelined): never closed for room.
        Unknown (a handler without aiohttp's flag) counts as serving."""
        if self.task is not None or self.protocol is None:
            return False  # still in its TLS handshake
        handler = self.protocol.inner
        return bool(getattr(handler, "_request_in_progress", True)) or bool(
            getattr(handler, "_messages", ())
        )

    def close(self) -> None:
        """End the connection now (a reset: a client that held the slot idle is owed no
        goodbye, and an orderly TLS close could wait on it)."""
        if self.task is not None:
            self.task.cancel()
        elif self.transport is not None:
            self.transport.abort()


class _Counted(asyncio.Protocol):
    """The application's protocol, seen through: the slot is released when its connection
    ends (aiohttp's handlers have slots, so they are wrapped rather than patched)."""

    def __init__(
        self, inner: asyncio.Protocol, slot: _Slot, release: Callable[[_Slot], None]
    ) -> None:
        self.inner = inner
        self._slot = slot
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._slot.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release(self._slot)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
