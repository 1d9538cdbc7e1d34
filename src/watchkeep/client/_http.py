"""HTTP(S) to watchkeep servers: host names resolved from the site, every certificate
verified, every failure translated into a watchkeep error."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from watchkeep.errors import ApiError, ConnectionFailed
from watchkeep.tls import Endpoint, explain_connection_failure

__all__ = ["ApiError", "SiteResolver", "call_json", "open_session"]


class SiteResolver(AbstractResolver):
    """Resolves the site's host names to the addresses the site records (no DNS needed
    on a site of loopback addresses); other names go to the system resolver."""

    def __init__(self, hosts: Mapping[str, str]) -> None:
        # Kept by reference: a caller that learns new hosts updates the dict it passed.
        self.hosts = hosts
        self._fallback = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.hosts.get(host.lower()) or self.hosts.get(host)
        if address is None:
            return await self._fallback.resolve(host, port, family)
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        await self._fallback.close()


def open_session(
    hosts: Mapping[str, str], *, timeout: float = 10.0, limit: int = 100
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=SiteResolver(hosts), limit=limit, ttl_dns_cache=None, use_dns_cache=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
    )


async def call_json(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    ssl_context: ssl.SSLContext | None,
    body: Any = None,
    token: str | None = None,
    trust_dir: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """One JSON request; returns the decoded body or raises ApiError / ConnectionFailed."""
    if endpoint.tls and ssl_context is None:
        raise ValueError("a TLS endpoint needs an ssl_context that verifies it")
    scheme = "https" if endpoint.tls else "http"
    url = f"{scheme}://{endpoint.host}:{endpoint.port}{path}"
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    try:
        async with session.request(
            method,
            url,
            json=body,
            headers=sent,
            ssl=ssl_context if endpoint.tls and ssl_context is not None else False,
        ) as response:
            raw = await response.read()
            status = response.status
            ctype = response.content_type
    except (aiohttp.ClientError, OSError, ssl.SSLError, TimeoutError) as exc:
        raise await explain_connection_failure(
            exc, endpoint, trust_dir=trust_dir, ssl_context=ssl_context
        ) from exc
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if status >= 400:
        if not isinstance(data, dict):
            data = {"detail": raw[:200].decode(errors="replace") or f"HTTP {status}"}
        raise ApiError(status, data, endpoint)
    if ctype not in ("application/json", "application/problem+json") and raw:
        raise ConnectionFailed(str(endpoint), f"expected JSON, got {ctype}")
    return data
