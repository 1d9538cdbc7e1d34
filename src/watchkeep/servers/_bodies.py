"""Request bodies as JSON objects, or a 400 problem document.

A body is taken only when it is JSON (UTF-8), nested no deeper than the parser goes, an
object, and every string in it, keys included, is Unicode text. The last is I-JSON's rule
(RFC 7493, section 2.1): Python's json module lets a lone UTF-16 surrogate through as a
``"\\ud800"`` escape, and then the database, the password hash or the encoder of whatever
comes next fails on it with a 500. Each route reads its body here, so that each refuses
the same things with the same problem.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

__all__ = ["BadBody", "json_object"]

_SURROGATE = re.compile("[\ud800-\udfff]")
# In a body decoded as UTF-8 (which refuses encoded surrogates) a surrogate can only come
# from a \\u escape: without one in the text there is nothing to look for in the decoded
# value (most bodies: every heartbeat). A body in another charset is looked through.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class BadBody(web.HTTPBadRequest):
    """A body no route takes: a 400 problem document saying why."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(
            text=json.dumps({"title": title, "status": 400, "detail": detail}),
            content_type="application/problem+json",
        )


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object; raises BadBody for anything else."""
    try:
        text = await request.text()
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise BadBody("malformed JSON", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadBody("expected a JSON object", "the body is JSON but not an object")
    utf8 = (request.charset or "utf-8").lower() in ("utf-8", "utf8")
    if (not utf8 or _SURROGATE_ESCAPE.search(text)) and not _unicode_text(body):
        raise BadBody(
            "malformed JSON",
            "a string in the body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
            "not in a pair): it is not Unicode text",
        )
    return body


def _unicode_text(value: Any) -> bool:
    """Whether every string in a decoded JSON value is free of lone surrogates (without
    recursion: the value may be nested as deep as the parser allowed)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True
