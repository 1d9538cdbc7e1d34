"""Access tokens at the management server: it issues them (log-in, stream and control
tokens, see watchkeep.servers._tokens for what each may do), checks the ones presented to
it, and revokes sessions and users before their tokens expire."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._tokens import (
    InvalidToken,
    Revocations,
    TokenSigner,
    TokenVerifier,
    config_digest,
)
from watchkeep.servers.management._http import Refused
from watchkeep.site import Server
from watchkeep.store import SiteStore, User

__all__ = ["Sessions"]

log = logging.getLogger("watchkeep.management")

# settings key: the revoked user tokens (Revocations.as_json(): users' cuts, sessions' jti)
REVOCATIONS_SETTING = "token_revocations"
# settings key: the key every management server of the site signs tokens with (PEM); who
# can write the site database can make an administrator anyway
TOKEN_KEY_SETTING = "token_signing_key"  # noqa: S105 (the name of a settings row)
# A revocation is kept this long past the token lifetime: for verifiers whose clocks run a
# little behind the management server's (a token's expiry is checked on their clock).
TOKEN_CLOCK_SLACK = 300.0
# Sessions logged out and not yet expired, at most: every server gets the list with its
# configuration, so a user logging in and out in a loop must not grow it without bound.
MAX_REVOKED_SESSIONS = 1000
CONTROL_TOKEN_TTL = 60.0


class Sessions:
    def __init__(
        self, config: ServerConfig, store: SiteStore, *, on_revoked: Callable[[], None]
    ) -> None:
        self.config = config
        self.store = store
        # One key for every management server of the site: the first to start on the
        # database puts its key there (a site that had one server keeps its key).
        own = TokenSigner.load_or_create(config.data_dir / "token.key")
        self.signer = TokenSigner.from_pem(
            str(store.adopt_setting(TOKEN_KEY_SETTING, own.private_pem())).encode()
        )
        self.verifier = TokenVerifier(self.signer.key.public_key())
        self._on_revoked = on_revoked

    def public_key_b64(self) -> str:
        return self.signer.public_key_b64()

    # -- issuing -------------------------------------------------------------------------

    def login_token(self, user: User, audience: Iterable[str]) -> str:
        """What a log-in returns: the user's role and cameras, for ``audience`` only."""
        return self.signer.issue(
            user.name,
            "user",
            audience,
            self.config.token_ttl,
            role=user.role,
            cameras=user.cameras if user.cameras is not None else "*",
        )

    def stream_token(self, claims: dict[str, Any], server: Server, camera: str, ttl: float) -> str:
        """A token that opens ``camera`` at ``server`` alone, for the user of ``claims``:
        no role, and refused by every other server (a recording server that keeps it has
        nothing it could not already show)."""
        return self.signer.issue(
            str(claims["sub"]), "stream", server.name, ttl, cameras=[camera], sid=claims["jti"]
        )

    def control_token(self, server: str, config: dict[str, Any]) -> str:
        """The push of ``config`` to ``server``: another recording server that kept it could
        push nothing with it anywhere, and one who saw it on a plaintext control link could
        push nothing else with it (the token carries the digest of the configuration)."""
        return self.signer.issue(
            self.config.name, "control", server, CONTROL_TOKEN_TTL, body=config_digest(config)
        )

    # -- checking ------------------------------------------------------------------------

    def claims(self, request: web.Request, *, role: str | None = None) -> dict[str, Any]:
        """The claims of the log-in token the request presents (of ``role`` if given);
        raises Refused with the 401 or 403 problem otherwise."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise Refused(
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
                revoked=self.revocations(),
            )
        except InvalidToken as exc:
            raise Refused(
                problem(401, "invalid token", exc.message, code="auth.token", fix=exc.fix)
            ) from None
        if role == "administrator" and claims.get("role") != "administrator":
            raise Refused(
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

    # -- revoking ------------------------------------------------------------------------

    def revocations(self) -> Revocations:
        """The user tokens revoked before they expire: only what can still refuse a token
        (a user's cut younger than the longest a token lives; a session's until it expires)."""
        now = time.time()
        stored = Revocations.from_json(self.store.setting(REVOCATIONS_SETTING, {}))
        return stored.pruned(
            users_after=now - self.config.token_ttl - TOKEN_CLOCK_SLACK,
            tokens_after=now - TOKEN_CLOCK_SLACK,
        )

    def revoke(self, *, user: str | None = None, claims: dict[str, Any] | None = None) -> None:
        """Refuse every token issued to ``user`` until now, or the one token with
        ``claims``: here at once, at the recording servers with the configuration pushed
        now, at the others with their next heartbeat."""
        now = time.time()
        revocations = self.revocations()
        if user is not None:
            revocations = revocations.with_user(user, now)
            log.info("%s: tokens of user %r issued until now are revoked", self.config.name, user)
        if claims is not None:
            revocations = revocations.with_session(claims, now, limit=MAX_REVOKED_SESSIONS)
            log.info("%s: user %r logged out a session", self.config.name, claims.get("sub"))
        self.store.set_setting(REVOCATIONS_SETTING, revocations.as_json())
        self._on_revoked()
