"""The management API as the CLI and other clients use it: where the management server
is, how to log in, and which scheme to speak (never falling back to plaintext by itself)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from watchkeep._files import atomic_write
from watchkeep._home import Home
from watchkeep.client._http import ApiError, SiteResolver, call_json, open_session
from watchkeep.errors import ConnectionFailed, HomeError, PlaintextToTlsPort, TlsToPlaintextPort
from watchkeep.tls import Endpoint, TrustMaterial, client_context, speaks_tls

__all__ = ["SiteClient", "SiteConnection", "StreamAccess"]

SCHEME_SWITCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class SiteConnection:
    """How this home reaches its site: written by `watchkeep site connect` or `demo`."""

    name: str
    host: str
    address: str
    port: int
    encryption: bool
    user: str
    password_file: str
    trust_store: str
    # The site's other management servers (sharing its database): {"name", "host",
    # "address", "port"} each, turned to when the one spoken to does not answer.
    others: list[dict[str, Any]] = field(default_factory=list)

    def endpoints(self) -> list[Endpoint]:
        first = Endpoint(self.name, self.host, self.address, self.port, self.encryption)
        return [first] + [
            Endpoint(str(o["name"]), str(o["host"]), str(o["address"]), int(o["port"]),
                     self.encryption)
            for o in self.others
        ]  # fmt: skip

    @classmethod
    def path(cls, home: Home) -> Path:
        return home.root / "site.json"

    @classmethod
    def load(cls, home: Home) -> SiteConnection:
        path = cls.path(home)
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError:
            raise HomeError(
                f"{path} does not exist: this home is not connected to a site",
                fix=f"watchkeep --home {home.root} site connect --host MS_HOST --address ADDR "
                "--user admin --password-file FILE",
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise HomeError(
                f"{path} is unreadable: {exc}", fix="run `watchkeep site connect` again"
            ) from exc

    def save(self, home: Home) -> None:
        atomic_write(self.path(home), json.dumps(asdict(self), indent=1).encode(), mode=0o600)

    def password(self) -> str:
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise HomeError(
                f"cannot read the password file {self.password_file}: {exc.strerror}",
                fix="watchkeep site connect ... --password-file FILE",
            ) from exc


@dataclass(frozen=True)
class StreamAccess:
    """Where a camera records now, and the stream token that opens it there (and only
    there: recording servers accept no log-in token)."""

    camera: str
    endpoint: Endpoint
    token: str


class SiteClient:
    """A logged-in session with the management server."""

    def __init__(self, home: Home, connection: SiteConnection | None = None) -> None:
        self.home = home
        self.connection = connection or SiteConnection.load(home)
        self.session: aiohttp.ClientSession | None = None
        self.token: str | None = None
        self.role: str | None = None
        self.management_name: str = self.connection.name
        self._hosts: dict[str, str] = {e.host: e.address for e in self.connection.endpoints()}
        self._at = 0  # which of the connection's management servers is spoken to
        self._resolver = SiteResolver(self._hosts)

    @property
    def trust(self) -> TrustMaterial:
        return TrustMaterial.load(Path(self.connection.trust_store))

    def endpoint(self) -> Endpoint:
        endpoints = self.connection.endpoints()
        return endpoints[self._at % len(endpoints)]

    def resolver(self) -> SiteResolver:
        """A resolver for the site's host names (shared: it learns as the client does)."""
        return self._resolver

    def learn_hosts(self, status: dict[str, Any]) -> None:
        for server in status.get("servers", []):
            self._hosts[str(server["host"])] = str(server["address"])

    async def __aenter__(self) -> SiteClient:
        self.session = open_session(self._hosts)
        try:
            await self.login()
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: close the session here, or
            # aiohttp prints "Unclosed client session" after the one-line error.
            await self.session.close()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        assert self.session is not None
        try:
            return await self._call(method, path, body, auth=auth)
        except ApiError as exc:
            if not (auth and exc.status == 401 and exc.code == "auth.token"):
                raise
            # The token expired (a client that runs for longer than token_ttl) or was
            # revoked (a new password, say): log in again, once; the call was refused
            # before it did anything, so it is safe to make again.
            await self.login()
            return await self._call(method, path, body, auth=auth)
        except PlaintextToTlsPort:
            # The management server's encryption was turned on: follow it, and remember,
            # so that this home never drops back to plaintext unless told over TLS.
            self.connection = replace(self.connection, encryption=True)
            self.connection.save(self.home)
            return await self._call(method, path, body, auth=auth)

    async def _call(self, method: str, path: str, body: Any, *, auth: bool) -> Any:
        """One call, to the management server spoken to, or, when it does not answer, to
        each of the site's others in turn (every one of them honours the token)."""
        for _ in range(len(self.connection.endpoints()) - 1):
            try:
                return await self._call_one(method, path, body, auth=auth)
            except (PlaintextToTlsPort, TlsToPlaintextPort):
                raise  # it answers, in another scheme: see call()
            except ConnectionFailed:
                self._at += 1
        return await self._call_one(method, path, body, auth=auth)

    async def _call_one(self, method: str, path: str, body: Any, *, auth: bool) -> Any:
        assert self.session is not None
        endpoint = self.endpoint()
        context = client_context(self.trust) if endpoint.tls else None
        return await call_json(
            self.session,
            endpoint,
            method,
            path,
            ssl_context=context,
            body=body,
            token=self.token if auth else None,
            trust_dir=self.connection.trust_store,
        )

    async def login(self) -> None:
        reply = await self.call(
            "POST",
            "/api/v1/login",
            {"user": self.connection.user, "password": self.connection.password()},
            auth=False,
        )
        self.token = str(reply["token"])
        self.role = str(reply["role"])
        self.management_name = str(reply.get("server") or self.connection.name)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", "/api/v1/site/status")
        return result

    async def stream_access(self, camera: str) -> StreamAccess:
        """Ask the management server where ``camera`` records now, and for a token to watch
        it there."""
        reply = await self.call("POST", f"/api/v1/cameras/{quote(camera, safe='')}/stream-token")
        self._hosts[str(reply["host"])] = str(reply["address"])
        return StreamAccess(
            str(reply["camera"]),
            Endpoint(
                str(reply["recording_server"]),
                str(reply["host"]),
                str(reply["address"]),
                int(reply["port"]),
                bool(reply["encryption"]),
            ),
            str(reply["token"]),
        )

    async def set_encryption(self, server: str, enabled: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", f"/api/v1/servers/{server}/encryption", {"enabled": enabled}
        )
        if server == self.connection.name:
            # Told over an authenticated answer: the only way this home changes scheme down.
            self.connection = replace(self.connection, encryption=enabled)
            self.connection.save(self.home)
            await self._wait_for_scheme(enabled)
        return result

    async def _wait_for_scheme(self, tls: bool, timeout: float = SCHEME_SWITCH_TIMEOUT) -> None:
        """The management server switches its listener just after its answer has gone out:
        return once it speaks the announced scheme, so that the next call neither meets the
        old scheme (and reads it as a refusal) nor follows it back up to TLS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and await speaks_tls(self.endpoint()) is not tls:
            await asyncio.sleep(0.05)
