"""The site's users: administrators add, list and remove them; a new password, new rights
or a removal revoke the user's tokens everywhere."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers.management._passwords import hash_password
from watchkeep.servers.management._sessions import Sessions
from watchkeep.store import SiteStore, User

__all__ = ["ROLES", "Users"]

log = logging.getLogger("watchkeep.management")

ROLES = ("administrator", "operator")


class Users:
    def __init__(self, config: ServerConfig, store: SiteStore, sessions: Sessions) -> None:
        self.config = config
        self.store = store
        self.sessions = sessions

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/users", self.list_users)
        router.add_post("/api/v1/users", self.add_user)
        router.add_patch("/api/v1/users/{name}", self.change_user)
        router.add_delete("/api/v1/users/{name}", self.delete_user)

    def bootstrap_admin(self) -> None:
        """User admin, with the configured password, on a site without any user."""
        if self.config.admin_password and not self.store.has_users():
            self.store.put_user(
                User("admin", "administrator", hash_password(self.config.admin_password), None)
            )
            log.info("%s: created user admin (administrator)", self.config.name)

    async def add_user(self, request: web.Request) -> web.Response:
        self.sessions.claims(request, role="administrator")
        body = await json_object(request)
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
        if self.store.put_user(User(name, role, hashed, cams)):
            # A new password or new rights: whoever holds one of the user's tokens (a stolen
            # one, say) must log in again.
            self.sessions.revoke(user=name)
        return web.json_response({"name": name, "role": role, "cameras": cams}, status=201)

    async def change_user(self, request: web.Request) -> web.Response:
        """New rights for a user, its password kept: ``role`` and/or ``cameras`` (a list of
        names, or null for every camera). Its tokens are revoked: the old rights are in them."""
        claims = self.sessions.claims(request, role="administrator")
        name = request.match_info["name"]
        body = await json_object(request)
        user = self.store.user(name)
        if user is None:
            return _unknown_user(name)
        role = body.get("role", user.role)
        cams = body.get("cameras", user.cameras)  # null: every camera
        if role not in ROLES:
            return problem(400, "bad user", f"role must be one of {', '.join(ROLES)}")
        if cams is not None and not (
            isinstance(cams, list) and all(isinstance(c, str) for c in cams)
        ):
            return problem(400, "bad user", "cameras must be a list of camera names, or null")
        if (
            user.role == "administrator"
            and role != "administrator"
            and not any(u.role == "administrator" and u.name != name for u in self.store.users())
        ):
            return _last_administrator(name)
        self.store.put_user(User(name, role, user.password_hash, cams))
        self.sessions.revoke(user=name)
        log.info("%s: rights of user %r changed by %r", self.config.name, name, claims.get("sub"))
        return web.json_response({"name": name, "role": role, "cameras": cams})

    async def list_users(self, request: web.Request) -> web.Response:
        """The users (administrators only): name, role and cameras; never a password hash."""
        self.sessions.claims(request, role="administrator")
        return web.json_response(
            [{"name": u.name, "role": u.role, "cameras": u.cameras} for u in self.store.users()]
        )

    async def delete_user(self, request: web.Request) -> web.Response:
        """Remove a user: it can no longer log in, and its tokens are revoked everywhere."""
        claims = self.sessions.claims(request, role="administrator")
        name = request.match_info["name"]
        outcome = self.store.delete_user(name)
        if outcome == "missing":
            return _unknown_user(name)
        if outcome == "last administrator":
            return _last_administrator(name)
        log.info("%s: user %r removed by %r", self.config.name, name, claims.get("sub"))
        self.sessions.revoke(user=name)
        return web.Response(status=204)


def _unknown_user(name: str) -> web.Response:
    return problem(
        404,
        "unknown user",
        f"the site has no user {name!r}",
        fix="GET /api/v1/users lists the users",
    )


def _last_administrator(name: str) -> web.Response:
    return problem(
        409,
        "last administrator",
        f"{name} is the site's only administrator: without one, nobody could change the site again",
        code="auth.last_administrator",
        fix="make another user an administrator first (POST /api/v1/users)",
    )
