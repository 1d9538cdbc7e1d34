"""Log-in and log-out: passwords checked off the event loop, guessing slowed per account
(apart for the addresses it logs in from) and per client address (auth.login_rate)."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiohttp import web

from watchkeep.servers._bodies import BadBody, json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._forwarded import proven_client
from watchkeep.servers._problems import problem
from watchkeep.servers._throttle import FamiliarAddresses, LoginThrottle
from watchkeep.servers.management._passwords import DUMMY_HASH, verify_password
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import ServerRole
from watchkeep.store import User

__all__ = ["Login"]

log = logging.getLogger("watchkeep.management")


class Login:
    def __init__(self, config: ServerConfig, site: SiteView, sessions: Sessions) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self._account_throttle = LoginThrottle(
            config.login_failures_per_account, max_delay=config.login_backoff_max
        )
        self._address_throttle = LoginThrottle(
            config.login_failures_per_address, max_delay=config.login_backoff_max
        )
        # Failures per account are counted apart for the addresses it logs in from.
        self._familiar = FamiliarAddresses()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/login", self.login)
        router.add_post("/api/v1/logout", self.logout)
        router.add_get("/api/v1/token-key", self.token_key)

    async def login(self, request: web.Request) -> web.Response:
        # A mobile server names the client it relays (proven with the registration key).
        address = (
            proven_client(request.headers, self.config.registration_key, time.time())
            or request.remote
            or "unknown"
        )
        try:
            body = await json_object(request)
        except BadBody:
            self._address_throttle.failed(address, time.monotonic())  # a failed try all the same
            raise
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            self._address_throttle.failed(address, time.monotonic())
            return problem(400, "bad login", "user and password must be strings")
        # The token is for the site's management servers, and for the mobile server that
        # relays the log-in (which has seen the password): nobody else accepts it.
        audience = self.site.management_names()
        via = body.get("audience")
        if via is not None:
            if not isinstance(via, str) or not any(
                s.name == via and s.role is ServerRole.MOBILE for s in self.site.servers()
            ):
                return problem(
                    400,
                    "bad login",
                    "audience must name a mobile server of this site",
                    fix="leave audience out to log in to the management server",
                )
            audience.append(via)
        refused = self._throttled(user, address)
        if refused is not None:
            return refused
        # One attempt at a time per account: parallel guesses cannot all pass the check
        # above before the first failure is counted.
        lock, waiting = self._locks.get(user, (asyncio.Lock(), 0))
        self._locks[user] = (lock, waiting + 1)
        try:
            async with lock:
                refused = self._throttled(user, address)
                if refused is not None:
                    return refused
                found = await self._check_password(user, password)
                if found is None:
                    return self._failed(user, address)
        finally:
            lock, waiting = self._locks[user]
            if waiting > 1:
                self._locks[user] = (lock, waiting - 1)
            else:
                del self._locks[user]
        self._account_throttle.succeeded(self._familiar.account_key(user, address, time.time()))
        self._familiar.logged_in(user, address, time.time())
        return web.json_response(
            {
                "token": self.sessions.login_token(found, audience),
                "role": found.role,
                "server": self.config.name,
                "expires_in": self.config.token_ttl,
                "token_public_key": self.sessions.public_key_b64(),
            }
        )

    async def logout(self, request: web.Request) -> web.Response:
        """End the caller's session: the token it presents is refused from now on (the
        user's other sessions, a CLI's say, go on)."""
        self.sessions.revoke(claims=self.sessions.claims(request))
        return web.Response(status=204)

    async def token_key(self, _request: web.Request) -> web.Response:
        return web.json_response({"token_public_key": self.sessions.public_key_b64()})

    async def _check_password(self, name: str, password: str) -> User | None:
        """The user, if ``password`` is its password."""
        user = self.site.store.user(name)
        loop = asyncio.get_running_loop()
        # scrypt costs ~50 ms: keep it off the event loop; compare against a dummy hash for
        # unknown users so that timing does not tell which users exist.
        stored = user.password_hash if user else DUMMY_HASH
        ok = await loop.run_in_executor(None, verify_password, password, stored)
        return user if ok else None

    def _throttled(self, user: str, address: str) -> web.Response | None:
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

    def _failed(self, user: str, address: str) -> web.Response:
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
