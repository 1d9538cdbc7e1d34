"""How the management API answers: a refusal raised anywhere becomes its problem document,
and watchkeep errors become 400 problems (never a 500 for input a client chose)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from watchkeep.errors import WatchkeepError
from watchkeep.servers._problems import problem

__all__ = ["Handler", "Refused", "errors"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
