"""How the management API answers: a refusal raised anywhere becomes its problem document,
and watchkeep errors become 400 problems (never a 500 for input a client chose)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from aiohttp import web

from watchkeep.errors import WatchkeepError
from watchkeep.servers._problems import problem

__all__ = ["Handler", "Refused", "errors"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("watchkeep.management")

UNREACHABLE_LOG_EVERY = 10.0  # seconds between two log lines of an unreachable database
_unreachable_logged = -UNREACHABLE_LOG_EVERY


class Refused(Exception):
    """A request refused with ``response`` (a problem document), from wherever it was
    decided (a token check deep inside a handler, say)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response
    except web.HTTPException as exc:
        if exc.content_type == "application/problem+json":
            raise
        return problem(exc.status, exc.reason, exc.text or exc.reason)
    except WatchkeepError as exc:
        return problem(400, "refused", exc.describe(), fix=exc.fix)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError) as exc:
        # The site database is down or unreachable: the request may be made again (at the
        # site's other management server, say); the log says so in one line now and then.
        global _unreachable_logged
        now = time.monotonic()
        if now - _unreachable_logged >= UNREACHABLE_LOG_EVERY:
            _unreachable_logged = now
            log.warning(
                "cannot reach the site database; answering 503 meanwhile: %s",
                str(getattr(exc, "orig", None) or exc).splitlines()[0],
            )
        return problem(
            503,
            "site database unreachable",
            "the management server cannot reach the site database now",
            fix="start the database server, or check [site] database_url; watchkeep doctor",
        )
