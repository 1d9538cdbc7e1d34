"""RFC 9457 problem documents: every API error names the rule, the server and the fix."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["camera_not_allowed", "problem"]


def camera_not_allowed(camera: str, who: str = "you") -> web.Response:
    """403: the caller's token does not open ``camera``."""
    return problem(
        403, "camera not allowed", f"{who} may not view camera {camera}", code="auth.camera"
    )


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str | None = None,
    server: str | None = None,
    fix: str | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://watchkeep.invalid/problems/{code or 'http'}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    if server:
        body["server"] = server
    if fix:
        body["fix"] = fix
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")
