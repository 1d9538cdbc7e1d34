"""The management server: site configuration, users and tokens, the encryption rules,
recording-server registration (mutual TLS when encrypted) and failover."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from watchkeep._names import validate_host_name
from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, WatchkeepError
from watchkeep.pki import fingerprint
from watchkeep.pki._lifecycle import warning_level
from watchkeep.servers._base import ServerProcess, utcnow
from watchkeep.servers._bodies import BadBody
from watchkeep.servers._bodies import json_object as _json_body
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._expiry import WatchedCertificate
from watchkeep.servers._forwarded import proven_client
from watchkeep.servers._listener import Listener
from watchkeep.servers._problems import problem
from watchkeep.servers._publish import Publisher, ca_bundle_route, start_publisher
from watchkeep.servers._renewal import Renewer, install_trust_payload, trust_payload
from watchkeep.servers._streams import redacted_source, source_problem
from watchkeep.servers._throttle import FamiliarAddresses, LoginThrottle
from watchkeep.servers._tokens import InvalidToken, Revocations, TokenSigner, TokenVerifier
from watchkeep.site import (
    Camera,
    Readiness,
    Server,
    ServerRole,
    encryption_blockers,
    plan_failover,
    registration_blocker,
)
from watchkeep.store import cameras, open_database, servers, settings, site_metadata, users
from watchkeep.tls import ClientAuth, Endpoint, explain_connection_failure

__all__ = ["ManagementServer", "hash_password", "verify_password"]

log = logging.getLogger("watchkeep.management")

ROLES = ("administrator", "operator")
TRUST_REFRESH = 60.0
# settings key: the revoked user tokens (Revocations.as_json(): users' cuts, sessions' jti)
REVOCATIONS_SETTING = "token_revocations"
# A revocation is kept this long past the token lifetime: for verifiers whose clocks run a
# little behind the management server's (a token's expiry is checked on their clock).
TOKEN_CLOCK_SLACK = 300.0
# Sessions logged out and not yet expired, at most: every server gets the list with its
# configuration, so a user logging in and out in a loop must not grow it without bound.
MAX_REVOKED_SESSIONS = 1000
# Seconds a token lives that this server makes for its own call to a recording server.
SNAPSHOT_TOKEN_TTL = 30.0
CONTROL_TOKEN_TTL = 60.0
SECURITY_LOG_INTERVAL = 60.0  # a refused attempt to speak for a server, logged once a minute
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return (
        f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=32,
    )
    return hmac.compare_digest(computed, base64.b64decode(digest))


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


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


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class ManagementServer(ServerProcess):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        url = config.database_url or f"sqlite:///{config.data_dir / 'site.db'}"
        self.db = open_database(url, site_metadata)
        self.signer = TokenSigner.load_or_create(config.data_dir / "token.key")
        self.verifier = TokenVerifier(self.signer.key.public_key())
        self.app = web.Application(middlewares=[self._errors], client_max_size=1 << 20)
        self._routes()
        self.runner = config.listener_limits.runner(self.app)
        self.listener: Listener | None = None
        self.publisher: Publisher | None = None  # [ports] publish: the CA and CRLs over HTTP
        self._push_lock = asyncio.Lock()
        self._pushes_asked = self._pushes_done = 0  # push_config() calls, and those served
        self.pushes = 0  # configuration pushes made (to every online recording server)
        self._trust_cache: tuple[object, dict[str, Any]] | None = None
        # Per recording server, its cameras that send it no pictures, and why (heartbeats).
        self._camera_problems: dict[str, dict[str, str]] = {}
        self.renewer = (
            Renewer(
                config.ca_home,
                config.ca_passphrase.encode() if config.ca_passphrase else None,
                config.renew_at,
                config.renew_jitter,
            )
            if config.ca_home is not None
            else None
        )
        # Log-in guessing is slowed per account and per client address (auth.login).
        self._account_throttle = LoginThrottle(
            config.login_failures_per_account, max_delay=config.login_backoff_max
        )
        self._address_throttle = LoginThrottle(
            config.login_failures_per_address, max_delay=config.login_backoff_max
        )
        # Failures per account are counted apart for the addresses it logs in from.
        self._familiar = FamiliarAddresses()
        self._login_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._security_logged: dict[str, float] = {}

    # -- database helpers ----------------------------------------------------------------

    def _setting(self, key: str, default: Any) -> Any:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).first()
        return row[0] if row else default

    def _set_setting(self, key: str, value: Any) -> None:
        with self.db.begin() as conn:
            if conn.execute(sa.select(settings.c.key).where(settings.c.key == key)).first():
                conn.execute(sa.update(settings).where(settings.c.key == key).values(value=value))
            else:
                conn.execute(sa.insert(settings).values(key=key, value=value))

    def _token_revocations(self) -> Revocations:
        """The user tokens revoked before they expire: only what can still refuse a token
        (a user's cut younger than the longest a token lives; a session's until it expires)."""
        now = time.time()
        stored = Revocations.from_json(self._setting(REVOCATIONS_SETTING, {}))
        return stored.pruned(
            users_after=now - self.config.token_ttl - TOKEN_CLOCK_SLACK,
            tokens_after=now - TOKEN_CLOCK_SLACK,
        )

    def _revoke(self, *, user: str | None = None, claims: dict[str, Any] | None = None) -> None:
        """Refuse every token issued to ``user`` until now, or the one token with
        ``claims``: here at once, at the recording servers with the configuration pushed
        now, at the others with their next heartbeat."""
        now = time.time()
        revocations = self._token_revocations()
        if user is not None:
            revocations = revocations.with_user(user, now)
            log.info("%s: tokens of user %r issued until now are revoked", self.config.name, user)
        if claims is not None:
            revocations = revocations.with_session(claims, now, limit=MAX_REVOKED_SESSIONS)
            log.info("%s: user %r logged out a session", self.config.name, claims.get("sub"))
        self._set_setting(REVOCATIONS_SETTING, revocations.as_json())
        self.spawn(self.push_config())

    @property
    def encryption(self) -> bool:
        return bool(self._setting("ms_encryption", False))

    def _server_rows(self) -> list[Server]:
        now = utcnow()
        timeout = dt.timedelta(seconds=self.config.failover_after)
        found = []
        with self.db.connect() as conn:
            for row in conn.execute(sa.select(servers).order_by(servers.c.name)):
                m = row._mapping
                last_seen = _utc(m["last_seen"])
                found.append(
                    Server(
                        name=m["name"],
                        role=ServerRole(m["role"]),
                        host=m["host"],
                        address=m["address"],
                        ports=dict(m["ports"]),
                        encryption=bool(m["encryption"]),
                        online=last_seen is not None and now - last_seen <= timeout,
                        last_seen=last_seen,
                        readiness=Readiness.from_json(m["readiness"]) if m["readiness"] else None,
                        encrypted_now=bool(m["encrypted_now"]),
                        covering=m["covering"],
                    )
                )
        me = self._me()
        return [me] + [s for s in found if s.name != me.name]

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

    def _cameras(self) -> list[Camera]:
        with self.db.connect() as conn:
            return [
                Camera(r.name, r.recording_server, dict(r.source), r.current_server)
                for r in conn.execute(sa.select(cameras).order_by(cameras.c.name))
            ]

    def _site_ca_fingerprint(self) -> str | None:
        """The CA that issued this server's certificate: the one every party must trust."""
        if self.tls is None:
            return None
        issuer = self.tls.certificate.issuer
        for ca in self.trust().certificates():
            if ca.subject == issuer:
                return fingerprint(ca)
        return None

    # -- authentication ------------------------------------------------------------------

    def _claims(self, request: web.Request, *, role: str | None = None) -> dict[str, Any]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise _Refused(
                problem(
                    401,
                    "login required",
                    "this call needs a token from POST /api/v1/login",
                    code="auth.token",
                    fix="log in first",
                )
            )
        try:
            claims = self.verifier.verify(
                header[7:],
                scope="user",
                audience=self.config.name,
                revoked=self._token_revocations(),
            )
        except InvalidToken as exc:
            raise _Refused(
                problem(401, "invalid token", exc.message, code="auth.token", fix=exc.fix)
            ) from None
        if role == "administrator" and claims.get("role") != "administrator":
            raise _Refused(
                problem(
                    403,
                    "administrators only",
                    f"user {claims.get('sub')} is an {claims.get('role')}; this change needs an "
                    "administrator",
                    code="auth.role",
                    fix="log in as an administrator",
                )
            )
        return claims

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as refused:
            return refused.response
        except web.HTTPException as exc:
            if exc.content_type == "application/problem+json":
                raise
            return problem(exc.status, exc.reason, exc.text or exc.reason)
        except WatchkeepError as exc:
            return problem(400, "refused", exc.describe(), fix=exc.fix)

    # -- routes --------------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.app.router
        r.add_post("/api/v1/login", self.login)
        r.add_post("/api/v1/logout", self.logout)
        r.add_get("/api/v1/site/status", self.site_status)
        r.add_get("/api/v1/servers", self.list_servers)
        r.add_patch("/api/v1/servers/{name}", self.update_server)
        r.add_post("/api/v1/servers/{name}/encryption", self.set_encryption)
        r.add_post("/api/v1/servers/{name}/heartbeat", self.heartbeat)
        r.add_get("/api/v1/cameras", self.list_cameras)
        r.add_post("/api/v1/cameras", self.add_camera)
        r.add_delete("/api/v1/cameras/{name}", self.delete_camera)
        r.add_get("/api/v1/users", self.list_users)
        r.add_post("/api/v1/users", self.add_user)
        r.add_delete("/api/v1/users/{name}", self.delete_user)
        r.add_get("/api/v1/cameras/{name}/snapshot.jpg", self.snapshot)
        r.add_post("/api/v1/cameras/{name}/stream-token", self.stream_token)
        r.add_get("/api/v1/token-key", self.token_key)
        r.add_get("/api/v1/ca", ca_bundle_route(self.config))  # public: trust install --from
        r.add_get("/metrics", self.metrics)

    async def login(self, request: web.Request) -> web.Response:
        # A mobile server names the client it relays (proven with the registration key).
        address = (
            proven_client(request.headers, self.config.registration_key, time.time())
            or request.remote
            or "unknown"
        )
        try:
            body = await _json_body(request)
        except BadBody:
            self._address_throttle.failed(address, time.monotonic())  # a failed try all the same
            raise
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            self._address_throttle.failed(address, time.monotonic())
            return problem(400, "bad login", "user and password must be strings")
        # The token is for this server, and for the mobile server that relays the log-in
        # (which has seen the password): nobody else accepts it.
        audience = [self.config.name]
        via = body.get("audience")
        if via is not None:
            if not isinstance(via, str) or not any(
                s.name == via and s.role is ServerRole.MOBILE for s in self._server_rows()
            ):
                return problem(
                    400,
                    "bad login",
                    "audience must name a mobile server of this site",
                    fix="leave audience out to log in to the management server",
                )
            audience.append(via)
        refused = self._login_throttled(user, address)
        if refused is not None:
            return refused
        # One attempt at a time per account: parallel guesses cannot all pass the check
        # above before the first failure is counted.
        lock, waiting = self._login_locks.get(user, (asyncio.Lock(), 0))
        self._login_locks[user] = (lock, waiting + 1)
        try:
            async with lock:
                refused = self._login_throttled(user, address)
                if refused is not None:
                    return refused
                row, ok = await self._check_password(user, password)
                if not row or not ok:
                    return self._login_failed(user, address)
        finally:
            lock, waiting = self._login_locks[user]
            if waiting > 1:
                self._login_locks[user] = (lock, waiting - 1)
            else:
                del self._login_locks[user]
        self._account_throttle.succeeded(self._familiar.account_key(user, address, time.time()))
        self._familiar.logged_in(user, address, time.time())
        token = self.signer.issue(
            row.name,
            "user",
            audience,
            self.config.token_ttl,
            role=row.role,
            cameras=row.cameras if row.cameras is not None else "*",
        )
        return web.json_response(
            {
                "token": token,
                "role": row.role,
                "server": self.config.name,
                "expires_in": self.config.token_ttl,
                "token_public_key": self.signer.public_key_b64(),
            }
        )

    async def _check_password(self, user: str, password: str) -> tuple[Any, bool]:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == user)).first()
        loop = asyncio.get_running_loop()
        # scrypt costs ~50 ms: keep it off the event loop; compare against a dummy hash for
        # unknown users so that timing does not tell which users exist.
        stored = row.password_hash if row else _DUMMY_HASH
        ok = await loop.run_in_executor(None, verify_password, password, stored)
        return row, ok

    def _login_throttled(self, user: str, address: str) -> web.Response | None:
        """429 while the account or the client address is shut out after failures."""
        now = time.monotonic()
        wait = max(
            self._account_throttle.retry_after(
                self._familiar.account_key(user, address, time.time()), now
            ),
            self._address_throttle.retry_after(address, now),
        )
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        response = problem(
            429,
            "too many failed log-ins",
            f"too many failed log-ins for this account or from this address; try again in "
            f"{seconds} s",
            code="auth.login_rate",
            server=self.config.name,
            fix=f"wait {seconds} s; an administrator can set a new password with "
            "POST /api/v1/users",
            retry_after=seconds,
        )
        response.headers["Retry-After"] = str(seconds)
        return response

    def _login_failed(self, user: str, address: str) -> web.Response:
        now = time.monotonic()
        account = self._familiar.account_key(user, address, time.time())
        by_account = self._account_throttle.failed(account, now)
        by_address = self._address_throttle.failed(address, now)
        if by_account or by_address:
            # Once per failure past the allowance: each doubles the wait, so the log grows
            # only logarithmically with a guessing attack.
            log.warning(
                "%s: log-in rate limit: %d failed log-ins in a row for user %r, %d from %s; "
                "refusing log-ins %s for %.0f s",
                self.config.name,
                self._account_throttle.failures(account),
                user[:64],
                self._address_throttle.failures(address),
                address,
                (
                    "for this user" + (" from elsewhere" if account.endswith("elsewhere") else "")
                    if by_account >= by_address
                    else "from this address"
                ),
                max(by_account, by_address),
            )
        return problem(401, "login failed", "unknown user or wrong password", code="auth.login")

    async def token_key(self, _request: web.Request) -> web.Response:
        return web.json_response({"token_public_key": self.signer.public_key_b64()})

    def server_json(self, server: Server, now: dt.datetime) -> dict[str, Any]:
        ready = server.readiness
        cert = ready.certificate if ready else None
        return {
            "name": server.name,
            "role": server.role.value,
            "host": server.host,
            "address": server.address,
            "ports": server.ports,
            "encryption": server.encryption,
            "encrypted_now": server.encrypted_now,
            "online": server.online,
            "last_seen": _iso(server.last_seen),
            "covering": server.covering,
            "certificate": (
                {
                    **cert.as_json(now),
                    "expiry_warning": warning_level(cert.not_after, now, self.config.warn_days),
                }
                if cert
                else None
            ),
            "problems": [
                {"code": c, "message": m, "fix": f} for c, m, f in (ready.problems if ready else ())
            ],
            "trusted_ca_fingerprints": list(ready.trusted_ca_fingerprints) if ready else [],
        }

    async def site_status(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        # An operator sees the cameras it may view, and not where they come from.
        allowed = claims.get("cameras", "*")
        administrator = claims.get("role") == "administrator"
        now = utcnow()
        return web.json_response(
            {
                "servers": [self.server_json(s, now) for s in self._visible_servers(claims)],
                "cameras": [
                    {
                        "name": c.name,
                        "recording_server": c.served_by,
                        "assigned_server": c.recording_server,
                        **({"source": redacted_source(c.source)} if administrator else {}),
                        # Why the camera sends its recording server no pictures, if it
                        # does not (from that server's last heartbeat).
                        "problem": self._camera_problems.get(c.served_by or "", {}).get(c.name),
                    }
                    for c in self._cameras()
                    if allowed == "*" or c.name in allowed
                ],
                "site_ca_sha256_fingerprint": self._site_ca_fingerprint(),
                "renewals": [
                    r.as_json() for r in (self.renewer.states.values() if self.renewer else [])
                ],
            }
        )

    def _visible_servers(self, claims: dict[str, Any]) -> list[Server]:
        """The servers a user may know of: every one for an administrator; for an operator
        the management server and the servers that record the cameras it may view."""
        everyone = self._server_rows()
        allowed = claims.get("cameras", "*")
        if claims.get("role") == "administrator":
            return everyone
        serving = {c.served_by for c in self._cameras() if allowed == "*" or c.name in allowed}
        return [s for s in everyone if s.role is ServerRole.MANAGEMENT or s.name in serving]

    async def list_servers(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        now = utcnow()
        return web.json_response([self.server_json(s, now) for s in self._visible_servers(claims)])

    async def list_cameras(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        allowed = claims.get("cameras", "*")
        return web.json_response(
            [
                {
                    "name": c.name,
                    "recording_server": c.served_by,
                    "assigned_server": c.recording_server,
                }
                for c in self._cameras()
                if allowed == "*" or c.name in allowed
            ]
        )

    def _camera_for(self, claims: dict[str, Any], name: str) -> tuple[Camera, Server]:
        """The camera ``name`` if the caller may view it, and the server that records it."""
        allowed = claims.get("cameras", "*")
        camera = next((c for c in self._cameras() if c.name == name), None)
        if camera is None or (allowed != "*" and name not in allowed):
            raise _Refused(problem(404, "unknown camera", f"no camera {name!r} you may view"))
        server = next((s for s in self._server_rows() if s.name == camera.served_by), None)
        if server is None:
            raise _Refused(
                problem(502, "no recording server", f"camera {name} has no recording server")
            )
        return camera, server

    def _stream_token(self, claims: dict[str, Any], server: Server, camera: str, ttl: float) -> str:
        """A token that opens ``camera`` at ``server`` alone, for the user of ``claims``:
        no role, and refused by every other server (a recording server that keeps it has
        nothing it could not already show)."""
        return self.signer.issue(
            str(claims["sub"]), "stream", server.name, ttl, cameras=[camera], sid=claims["jti"]
        )

    async def stream_token(self, request: web.Request) -> web.Response:
        """Where a camera records now, and a token to watch it there (live or playback).
        It lives no longer than the caller's own token, nor than token_ttl."""
        claims = self._claims(request)
        camera, server = self._camera_for(claims, request.match_info["name"])
        ttl = min(self.config.token_ttl, float(claims["exp"]) - time.time())
        return web.json_response(
            {
                "camera": camera.name,
                "recording_server": server.name,
                "host": server.host,
                "address": server.address,
                "port": server.ports["data"],
                "encryption": server.encryption,
                "token": self._stream_token(claims, server, camera.name, ttl),
                "expires_in": int(ttl),
            }
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        """A camera's latest picture, fetched from its recording server like any client
        would: over TLS verified against this server's trust store when that server's
        encryption is on (the specification's "management server ... images"), with a
        stream token of the caller's for that camera at that server."""
        claims = self._claims(request)
        camera, server = self._camera_for(claims, request.match_info["name"])
        name = camera.name
        endpoint = Endpoint(
            server.name, server.host, server.address, server.ports["data"], server.encryption
        )
        context = self.client_ssl_context(present_certificate=False) if server.encryption else None
        token = self._stream_token(claims, server, name, SNAPSHOT_TOKEN_TTL)
        async with open_session({server.host: server.address}, timeout=5) as session:
            url = f"{'https' if endpoint.tls else 'http'}://{server.host}:{endpoint.port}"
            try:
                async with session.get(
                    f"{url}/api/v1/cameras/{name}/snapshot.jpg",
                    headers={"Authorization": f"Bearer {token}"},
                    ssl=context if context is not None else False,
                ) as upstream:
                    body = await upstream.read()
                    if upstream.status != 200:
                        return web.Response(
                            status=upstream.status, body=body, content_type=upstream.content_type
                        )
                    return web.Response(body=body, content_type="image/jpeg")
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                error = await explain_connection_failure(
                    exc, endpoint, trust_dir=str(self.config.trust_store)
                )
                return problem(
                    502, "recording server refused", str(error), server=server.name, fix=error.fix
                )

    async def add_user(self, request: web.Request) -> web.Response:
        self._claims(request, role="administrator")
        body = await _json_body(request)
        name, password, role = body.get("name"), body.get("password"), body.get("role", "operator")
        cams = body.get("cameras")
        if (
            not isinstance(name, str)
            or not name
            or not isinstance(password, str)
            or len(password) < 8
        ):
            return problem(
                400, "bad user", "name and a password of at least 8 characters are needed"
            )
        if role not in ROLES:
            return problem(400, "bad user", f"role must be one of {', '.join(ROLES)}")
        if cams is not None and not (
            isinstance(cams, list) and all(isinstance(c, str) for c in cams)
        ):
            return problem(400, "bad user", "cameras must be a list of camera names")
        hashed = await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
        with self.db.begin() as conn:
            existed = conn.execute(sa.select(users.c.name).where(users.c.name == name)).first()
            conn.execute(sa.delete(users).where(users.c.name == name))
            conn.execute(
                sa.insert(users).values(name=name, role=role, password_hash=hashed, cameras=cams)
            )
        if existed:
            # A new password or new rights: whoever holds one of the user's tokens (a stolen
            # one, say) must log in again.
            self._revoke(user=name)
        return web.json_response({"name": name, "role": role, "cameras": cams}, status=201)

    async def list_users(self, request: web.Request) -> web.Response:
        """The users (administrators only): name, role and cameras; never a password hash."""
        self._claims(request, role="administrator")
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.name)).all()
        return web.json_response(
            [{"name": r.name, "role": r.role, "cameras": r.cameras} for r in rows]
        )

    async def delete_user(self, request: web.Request) -> web.Response:
        """Remove a user: it can no longer log in, and its tokens are revoked everywhere."""
        claims = self._claims(request, role="administrator")
        name = request.match_info["name"]
        with self.db.begin() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if row is None:
                return problem(
                    404,
                    "unknown user",
                    f"the site has no user {name!r}",
                    fix="GET /api/v1/users lists the users",
                )
            others = conn.execute(
                sa.select(sa.func.count())
                .select_from(users)
                .where(users.c.role == "administrator", users.c.name != name)
            ).scalar_one()
            if row.role == "administrator" and not others:
                return problem(
                    409,
                    "last administrator",
                    f"{name} is the site's only administrator: without one, nobody could "
                    "change the site again",
                    code="auth.last_administrator",
                    fix="make another user an administrator first (POST /api/v1/users)",
                )
            conn.execute(sa.delete(users).where(users.c.name == name))
        log.info("%s: user %r removed by %r", self.config.name, name, claims.get("sub"))
        self._revoke(user=name)
        return web.Response(status=204)

    async def logout(self, request: web.Request) -> web.Response:
        """End the caller's session: the token it presents is refused from now on (the
        user's other sessions, a CLI's say, go on)."""
        self._revoke(claims=self._claims(request))
        return web.Response(status=204)

    async def add_camera(self, request: web.Request) -> web.Response:
        self._claims(request, role="administrator")
        body = await _json_body(request)
        name, rs, source = body.get("name"), body.get("recording_server"), body.get("source")
        if not isinstance(name, str):
            return problem(400, "bad camera", "name must be a string")
        refused = source_problem(name, source)
        if refused is not None:
            return problem(400, "bad camera", refused[0], fix=refused[1])
        known = {s.name: s for s in self._server_rows()}
        if rs not in known or known[rs].role is not ServerRole.RECORDING:
            return problem(
                404,
                "unknown recording server",
                f"{rs!r} is not a registered recording server",
                fix="watchkeep site status lists the recording servers",
            )
        with self.db.begin() as conn:
            conn.execute(sa.delete(cameras).where(cameras.c.name == name))
            conn.execute(sa.insert(cameras).values(name=name, recording_server=rs, source=source))
        self._rebalance()
        self.spawn(self.push_config())
        return web.json_response({"name": name, "recording_server": rs}, status=201)

    async def delete_camera(self, request: web.Request) -> web.Response:
        self._claims(request, role="administrator")
        with self.db.begin() as conn:
            deleted = conn.execute(
                sa.delete(cameras).where(cameras.c.name == request.match_info["name"])
            ).rowcount
        if not deleted:
            return problem(404, "unknown camera", f"no camera {request.match_info['name']!r}")
        self.spawn(self.push_config())
        return web.json_response({"deleted": request.match_info["name"]})

    def metrics_certificates(self) -> list[WatchedCertificate]:
        """Its own and its CAs, and every certificate the site's servers report, so that one
        scrape of the management server covers the site."""
        found = self.watched_certificates()
        for server in self._server_rows()[1:]:
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

    async def update_server(self, request: web.Request) -> web.Response:
        """An administrator moves a registered server to another host name or address (its
        own heartbeats cannot: the management link binds a server to both)."""
        claims = self._claims(request, role="administrator")
        body = await _json_body(request)
        name = request.match_info["name"]
        everyone = self._server_rows()
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
        with self.db.begin() as conn:
            conn.execute(
                sa.update(servers)
                .where(servers.c.name == name)
                .values(host=host, address=address, last_seen=None)
            )
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

    # -- encryption ----------------------------------------------------------------------

    async def set_encryption(self, request: web.Request) -> web.Response:
        self._claims(request, role="administrator")
        body = await _json_body(request)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            return problem(400, "bad request", "enabled must be true or false")
        name = request.match_info["name"]
        all_servers = self._server_rows()
        target = next((s for s in all_servers if s.name == name), None)
        if target is None:
            return problem(
                404, "unknown server", f"no server named {name!r}", fix="watchkeep site status"
            )
        blockers = encryption_blockers(
            target, enabled, all_servers, ca_fingerprint=self._site_ca_fingerprint()
        )
        if blockers:
            listing = "; ".join(
                f"[{b.code}] {b.server}: {b.message} (fix: {b.fix})" for b in blockers
            )
            return problem(
                409,
                "encryption change refused",
                f"{'enabling' if enabled else 'disabling'} encryption on {name} is refused: "
                f"{len(blockers)} problem(s): {listing}",
                code=blockers[0].code,
                server=name,
                fix="resolve each problem listed, then run the command again"
                if len(blockers) > 1
                else blockers[0].fix,
                blockers=[
                    {"code": b.code, "server": b.server, "message": b.message, "fix": b.fix}
                    for b in blockers
                ],
            )
        if target.role is ServerRole.MANAGEMENT:
            self._set_setting("ms_encryption", enabled)
            changed_at = utcnow()
            # Switch after this answer has gone out over the old listener.
            asyncio.get_running_loop().call_later(
                0.2, lambda: self.spawn(self._switch_listener(changed_at))
            )
        else:
            with self.db.begin() as conn:
                conn.execute(
                    sa.update(servers).where(servers.c.name == name).values(encryption=enabled)
                )
            self.spawn(self.push_config())
        log.info("%s: encryption %s on %s", self.config.name, "on" if enabled else "off", name)
        return web.json_response({"server": name, "encryption": enabled})

    async def _switch_listener(self, changed_at: dt.datetime) -> None:
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
                for s in self._server_rows()
            ):
                await asyncio.sleep(0.1)
        await self.listener.restart(self.server_ssl_context() if want_tls else None)

    # -- recording/mobile servers --------------------------------------------------------

    def _config_for(
        self, server: Server, all_cameras: list[Camera], all_servers: list[Server]
    ) -> dict[str, Any]:
        # Each server is told what its role needs: a mobile server relays video, so it
        # learns where cameras are, never where they come from (their URLs hold passwords).
        mine = [c for c in all_cameras if c.served_by == server.name and server.role.records]
        config = {
            "ms_encryption": self.encryption,
            "encryption": server.encryption,
            "token_public_key": self.signer.public_key_b64(),
            "token_revocations": self._token_revocations().as_json(),
            "cameras": [{"name": c.name, "source": c.source} for c in mine],
            "site_cameras": [
                {"name": c.name, "recording_server": c.served_by} for c in all_cameras
            ],
            "covering": server.covering,
            "trust": self._trust_payload(),
            "site": {
                s.name: {
                    "role": s.role.value,
                    "host": s.host,
                    "address": s.address,
                    "ports": s.ports,
                    "encryption": s.encryption,
                }
                for s in all_servers
            },
        }
        # A server that sends this digest back has all of it (see heartbeat()).
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config["config_digest"] = hashlib.sha256(canonical).hexdigest()
        return config

    def _trust_payload(self) -> dict[str, Any]:
        """The site's CAs (both, during a rotation), retired CAs and fresh CRLs; empty when
        this management server holds no CA. Re-read when the CA files change, and at least
        once a minute so that CRLs are re-signed long before they expire."""
        if self.renewer is None:
            return {}
        ca_dir = self.renewer.ca_home / "ca"
        try:
            key = (
                int(time.monotonic() // TRUST_REFRESH),
                tuple(
                    sorted((str(p), p.stat().st_mtime_ns) for p in ca_dir.rglob("*") if p.is_file())
                ),
            )
        except OSError:
            key = None
        if self._trust_cache is not None and self._trust_cache[0] == key:
            return self._trust_cache[1]
        try:
            payload = trust_payload(self.renewer.pki())
        except (WatchkeepError, OSError, ValueError) as exc:
            log.warning("%s: cannot read the CA's trust bundle: %s", self.config.name, exc)
            return self._trust_cache[1] if self._trust_cache else {}
        self._trust_cache = (key, payload)
        if self.config.trust_store is not None:
            # The management server verifies recording servers too: it trusts what it hands out.
            install_trust_payload(self.config.trust_store, payload, log_as=self.config.name)
        return payload

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

    def _check_identity(
        self,
        request: web.Request,
        name: str,
        claimed: Server,
        existing: Server | None,
        everyone: list[Server],
    ) -> web.Response | None:
        """A heartbeat speaks for ``name`` only as it was registered: the same role, host
        and address (changed by an administrator only, PATCH /api/v1/servers/NAME), and a
        host that no other server has."""
        peer = request.remote or "unknown"
        fix = (
            f"if {name} really moved, an administrator says so: watchkeep server update "
            f"{name} --host HOST --address ADDRESS"
        )
        if existing is not None:
            if claimed.role is not existing.role:
                self._security_event(
                    f"role:{name}:{peer}",
                    "a heartbeat from %s for %s (a %s server) claimed role %s; refused",
                    peer,
                    name,
                    existing.role.value,
                    claimed.role.value,
                )
                return problem(
                    409,
                    "server identity is fixed",
                    f"{name} is registered as a {existing.role.value} server; a heartbeat "
                    f"cannot make it a {claimed.role.value} server",
                    code="auth.registration",
                    server=name,
                    fix=f"give the new server a name of its own, or an administrator removes "
                    f"{name} from the site first",
                )
            if (claimed.host, claimed.address) != (existing.host, existing.address):
                self._security_event(
                    f"moved:{name}:{peer}",
                    "a heartbeat from %s for %s (registered as %s at %s) claimed %s at %s; refused",
                    peer,
                    name,
                    existing.host,
                    existing.address,
                    claimed.host,
                    claimed.address,
                )
                return problem(
                    409,
                    "server identity is fixed",
                    f"{name} is registered as {existing.host} at {existing.address}; a "
                    f"heartbeat cannot move it to {claimed.host} at {claimed.address}",
                    code="auth.registration",
                    server=name,
                    fix=fix,
                )
            return None
        other = next((s for s in everyone if s.host == claimed.host and s.name != name), None)
        if other is not None:
            self._security_event(
                f"taken:{name}:{peer}",
                "a heartbeat from %s registering %s as %s, the host of %s; refused",
                peer,
                name,
                claimed.host,
                other.name,
            )
            return problem(
                409,
                "host already registered",
                f"{claimed.host} is the host of {other.name}; {name} cannot register with it",
                code="auth.registration",
                server=name,
                fix=f"give {name} a host of its own, or stop {other.name} and let an "
                f"administrator remove it first",
            )
        return None

    def _check_peer(self, request: web.Request, name: str, host: str) -> web.Response | None:
        """On an encrypted management link, the caller must prove it is ``host``, the host
        ``name`` is registered with: a certificate of the site CA for another server speaks
        for that server only."""
        if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
            return None
        cert = request.transport.get_extra_info("peercert")
        if not cert:
            return problem(
                401,
                "client certificate required",
                f"management server encryption is on: {name} must present its certificate "
                "from the site CA (mutual TLS)",
                code="cert.chain",
                server=name,
                fix="set [tls] certificate and key in the server's config",
            )
        names = [v.lower() for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
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

    async def heartbeat(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await _json_body(request)
        try:
            role = ServerRole(str(body.get("role")))
            host = validate_host_name(str(body.get("host", "")))
            address = str(ipaddress.ip_address(str(body["address"])))
            ports = {str(k): int(v) for k, v in dict(body["ports"]).items()}
            readiness = Readiness.from_json(dict(body.get("readiness") or {}))
            encrypted_now = bool(body.get("encrypted_now", False))
        except (KeyError, TypeError, ValueError, OverflowError, WatchkeepError) as exc:
            return problem(400, "bad heartbeat", f"malformed heartbeat from {name}: {exc}")
        if role is ServerRole.MANAGEMENT:
            return problem(400, "bad heartbeat", "a management server does not register")
        camera_problems = _camera_problems(body.get("camera_problems"))
        key = self.config.registration_key
        if key and not hmac.compare_digest(str(body.get("registration_key", "")), key):
            return problem(
                401,
                "registration refused",
                f"{name} presented no or a wrong registration key",
                code="auth.registration",
                server=name,
                fix="copy the site's registration key file into the server's [management] section",
            )
        everyone = self._server_rows()
        existing = next((s for s in everyone if s.name == name), None)
        claimed = Server(name, role, host, address, ports, readiness=readiness)
        refused = self._check_identity(request, name, claimed, existing, everyone)
        if refused is not None:
            return refused
        # site.ms_requires_all_rs before the certificate check: a recording server that
        # cannot be encrypted (no certificate yet, say) hears why, not only that it
        # presented no certificate.
        blocker = registration_blocker(claimed, everyone[0])
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
        refused = self._check_peer(request, name, host)
        if refused is not None:
            return refused
        encryption = existing.encryption if existing else False
        if self.encryption and role.records:
            encryption = True  # site.ms_requires_all_rs: an encrypted site encrypts newcomers
        values = {
            "role": role.value,
            "host": host,
            "address": address,
            "ports": ports,
            "encryption": encryption,
            "encrypted_now": encrypted_now,
            "last_seen": utcnow(),
            "readiness": readiness.as_json(utcnow()),
        }
        with self.db.begin() as conn:
            if existing is None:
                conn.execute(sa.insert(servers).values(name=name, extra={}, **values))
                log.info(
                    "%s: %s server %s registered (%s, %s)",
                    self.config.name,
                    role.value,
                    name,
                    host,
                    address,
                )
            else:
                conn.execute(sa.update(servers).where(servers.c.name == name).values(**values))
        self._camera_problems[name] = camera_problems
        if existing is None or not existing.online:
            self._rebalance()
        # One read of the site per heartbeat: every recording server sends one a second.
        everyone = self._server_rows()
        me = next(s for s in everyone if s.name == name)
        config = self._config_for(me, self._cameras(), everyone)
        if body.get("config_digest") == config["config_digest"]:
            # What the server already has: a few bytes instead of every camera of the site.
            return web.json_response(
                {
                    "unchanged": True,
                    "config_digest": config["config_digest"],
                    "ms_encryption": self.encryption,
                }
            )
        return web.json_response(config)

    # -- failover ------------------------------------------------------------------------

    def _rebalance(self) -> list[str]:
        """Apply the failover plan; returns the servers whose camera set changed."""
        all_servers = self._server_rows()
        moves, covering = plan_failover(
            all_servers,
            self._cameras(),
            now=utcnow(),
            timeout=dt.timedelta(seconds=self.config.failover_after),
        )
        changed: set[str] = set()
        with self.db.begin() as conn:
            for fo, target in covering.items():
                current = next(s.covering for s in all_servers if s.name == fo)
                if current != target:
                    conn.execute(
                        sa.update(servers).where(servers.c.name == fo).values(covering=target)
                    )
                    changed.add(fo)
            for move in moves:
                conn.execute(
                    sa.update(cameras)
                    .where(cameras.c.name == move.camera)
                    .values(current_server=move.to_server)
                )
                log.warning("%s: camera %s: %s", self.config.name, move.camera, move.reason)
                changed.add(move.to_server)
        return sorted(changed)

    async def _failover_loop(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(min(1.0, self.config.failover_after / 4))
            if self._rebalance():
                await self.push_config()

    def metrics_extra(self) -> str:
        return (
            "# HELP watchkeep_config_pushes_total Configuration pushes made (each to every online "
            "recording server).\n"
            "# TYPE watchkeep_config_pushes_total counter\n"
            f"watchkeep_config_pushes_total {self.pushes}\n"
        )

    async def push_config(self) -> None:
        """Tell every online recording server its configuration now, over the control link.

        Heartbeat answers carry the same configuration, so a push that fails is repaired
        within one heartbeat. Calls made while a push runs are served together by the next
        one (it reads the site after all of them): adding 500 cameras one by one makes a
        few pushes, not 500 pushes of up to 500 cameras each."""
        self._pushes_asked += 1
        asked = self._pushes_asked
        async with self._push_lock:
            if self._pushes_done >= asked:
                return  # a push that began after this call has been made
            covering = self._pushes_asked
            if await self._push_now():
                self.pushes += 1
            self._pushes_done = covering

    async def _push_now(self) -> bool:
        """One push to every online recording server; False when there is none."""
        all_cameras = self._cameras()
        everyone = self._server_rows()
        targets = [s for s in everyone if s.role.records and s.online]
        if not targets:
            return False
        tls = self.encryption
        context = self.client_ssl_context(present_certificate=True) if tls else None
        hosts = {s.host: s.address for s in targets}
        async with open_session(hosts, timeout=3) as session:
            for server in targets:
                endpoint = Endpoint(
                    server.name, server.host, server.address, server.ports["control"], tls
                )
                try:
                    await call_json(
                        session,
                        endpoint,
                        "POST",
                        "/control/v1/config",
                        ssl_context=context,
                        body=self._config_for(server, all_cameras, everyone),
                        # For this recording server alone: another one that kept it could
                        # not push a configuration with it anywhere.
                        token=self.signer.issue(
                            self.config.name, "control", server.name, CONTROL_TOKEN_TTL
                        ),
                    )
                except (ConnectionFailed, ApiError) as exc:
                    log.warning(
                        "%s: config push to %s failed: %s", self.config.name, server.name, exc
                    )
        return True

    # -- life cycle ----------------------------------------------------------------------

    def _bootstrap_admin(self) -> None:
        with self.db.connect() as conn:
            any_user = conn.execute(sa.select(users.c.name).limit(1)).first()
        if any_user is None and self.config.admin_password:
            with self.db.begin() as conn:
                conn.execute(
                    sa.insert(users).values(
                        name="admin",
                        role="administrator",
                        password_hash=hash_password(self.config.admin_password),
                        cameras=None,
                    )
                )
            log.info("%s: created user admin (administrator)", self.config.name)

    async def start(self) -> None:
        # Recording servers dial in with their certificates when the link is encrypted.
        self.check_certificate_at_start(ClientAuth.OPTIONAL)
        if self.encryption and self.tls is None:
            raise WatchkeepError(
                f"{self.config.name}: encryption is on but no certificate is configured in "
                f"{self.config.path}",
                fix="set [tls] certificate, key and trust_store",
            )
        self._bootstrap_admin()
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
        self.spawn(self._failover_loop())
        if self.renewer is not None:
            self.spawn(self._renewal_loop())

    async def _renewal_loop(self) -> None:
        assert self.renewer is not None
        while not self.stopping.is_set():
            try:
                await self.renewer.run_once(utcnow())
            except (WatchkeepError, OSError) as exc:
                log.warning("%s: renewal check failed: %s", self.config.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.renew_check_interval)

    async def shutdown(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.runner.cleanup()
        self.db.dispose()


_DUMMY_HASH = hash_password(secrets.token_hex(16))
