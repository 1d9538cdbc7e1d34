"""Listeners that can switch between plaintext and TLS while the server runs.

aiohttp's own sites hide the handshake settings; here every listener sets a handshake
timeout (one slow client never blocks another: asyncio does each handshake on its own)
and is restarted in place when its server's encryption is turned on or off.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

__all__ = ["HANDSHAKE_TIMEOUT", "Listener"]

HANDSHAKE_TIMEOUT = 10.0
log = logging.getLogger("watchkeep.servers")


class Listener:
    def __init__(
        self, server: str, name: str, runner: web.AppRunner, address: str, port: int
    ) -> None:
        self.server = server
        self.name = name
        self.runner = runner
        self.address = address
        self.port = port
        self._server: asyncio.Server | None = None
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        assert self.runner.server is not None
        self._server = await loop.create_server(
            self.runner.server,
            self.address,
            self.port,
            ssl=ssl_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ssl_context else None,
            reuse_address=True,
            backlog=1024,
        )
        self.ssl_context = ssl_context
        log.info(
            "%s: %s listener on %s://%s:%d",
            self.server,
            self.name,
            "https" if ssl_context else "http",
            self.address,
            self.port,
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._server = None
        # Connections accepted under the old setting must not outlive it: a plaintext
        # stream must not keep flowing after its server's encryption was turned on.
        handler = self.runner.server
        for connection in list(getattr(handler, "connections", [])):
            transport = connection.transport
            if transport is None:
                continue
            sockname = transport.get_extra_info("sockname")
            if sockname and sockname[1] == self.port:
                transport.close()

    async def restart(self, ssl_context: ssl.SSLContext | None) -> None:
        await self.stop()
        await self.start(ssl_context)
