"""A management server whose site database cannot be reached answers 503, not 500.

Given a request whose handler finds the site database down (PostgreSQL stopped, its
socket gone), when it is answered, then the client gets a 503 problem naming the database
and the fix (a client may ask the site's other management server), and the server log has
one warning line, not a traceback per request.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from watchkeep.servers.management import _http


def unreachable() -> sa.exc.OperationalError:
    return sa.exc.OperationalError(
        "SELECT 1",
        {},
        Exception('connection to server on socket "/tmp/pg/.s.PGSQL.5432" failed\nIs it running?'),
    )


async def handler(request: web.Request) -> web.Response:
    raise unreachable()


async def answers() -> list[tuple[int, dict[str, object]]]:
    app = web.Application(middlewares=[_http.errors])
    app.router.add_post("/api/v1/servers/rs1/heartbeat", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        found = []
        for _ in range(3):
            response = await client.post("/api/v1/servers/rs1/heartbeat", json={})
            found.append((response.status, await response.json(content_type=None)))
        return found


def test_an_unreachable_site_database_is_a_503_and_one_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "_unreachable_logged", -_http.UNREACHABLE_LOG_EVERY)
    with caplog.at_level(logging.WARNING, logger="watchkeep.management"):
        found = asyncio.run(answers())
    for status, body in found:
        assert status == 503
        assert body["title"] == "site database unreachable"
        assert "database_url" in str(body["fix"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "cannot reach the site database" in lines[0]
    assert "\n" not in lines[0]
