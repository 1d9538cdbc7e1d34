"""`watchkeep server run ROLE --config FILE`: run one server process in the foreground;
`watchkeep server update NAME --host H --address A`: tell the site a server has moved."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, call_site, emit_json
from watchkeep.site import ServerRole

__all__ = ["register"]

# The programs, in the order of the server roles that run them.
_PROGRAMS = list(dict.fromkeys(role.program for role in ServerRole))


def register(groups: Any) -> None:
    server = groups.add_parser("server", help="run a watchkeep server")
    sub = server.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run a server in the foreground until SIGTERM/SIGINT")
    run.add_argument(
        "role",
        choices=_PROGRAMS,
        help="the program a server runs: a failover server runs recording",
    )
    run.add_argument("--config", type=Path, required=True, help="the server's TOML config")
    run.set_defaults(handler=_run)
    update = sub.add_parser(
        "update",
        help="record that a registered server moved to another host name or address "
        "(administrators; its own heartbeats cannot change them)",
    )
    update.add_argument("name", help="the server's name, as `site status` lists it")
    update.add_argument("--host", help="its new host name (the one in its certificate)")
    update.add_argument("--address", help="its new IP address")
    add_json(update)
    update.set_defaults(handler=_update)


def _update(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from watchkeep.errors import UsageError

    body = {k: v for k, v in (("host", args.host), ("address", args.address)) if v is not None}
    if not body:
        raise UsageError(
            "server update needs --host, --address or both",
            fix=f"watchkeep server update {args.name} --host HOST --address ADDRESS",
        )
    result = call_site(args, "PATCH", f"/api/v1/servers/{quote(args.name, safe='')}", body)
    if args.json:
        emit_json(result)
    else:
        print(f"{result['name']}: now {result['host']} at {result['address']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from watchkeep.errors import UsageError
    from watchkeep.servers import load_config, server_for
    from watchkeep.servers._base import configure_logging

    config = load_config(args.config)
    if config.role.program != args.role:
        raise UsageError(
            f"{args.config} configures a {config.role.value} server, not a {args.role} server",
            fix=f"watchkeep server run {config.role.program} --config {args.config}",
        )
    configure_logging(config.name)
    process = server_for(config)
    if config.role.records or config.role is ServerRole.MANAGEMENT:
        # uvloop carries the recording server's stream path (hundreds of camera and viewer
        # sockets) at a lower cost per frame than asyncio's own loop (bench/results/stream.md),
        # and the management server's heartbeats, a TLS request a second from every server
        # of the site (bench/results/ms_scale.md).
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(process.run())
    else:
        asyncio.run(process.run())
    return 0
