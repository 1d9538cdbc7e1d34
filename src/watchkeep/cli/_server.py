"""`watchkeep server run ROLE --config FILE`: run one server process in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(groups: Any) -> None:
    server = groups.add_parser("server", help="run a watchkeep server")
    sub = server.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run a server in the foreground until SIGTERM/SIGINT")
    run.add_argument("role", choices=["management", "recording", "mobile"])
    run.add_argument("--config", type=Path, required=True, help="the server's TOML config")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from watchkeep.errors import UsageError
    from watchkeep.servers import load_config, server_for
    from watchkeep.servers._base import configure_logging

    config = load_config(args.config)
    expected = {
        "management": ("management",),
        "recording": ("recording", "failover"),
        "mobile": ("mobile",),
    }
    if config.role.value not in expected[args.role]:
        raise UsageError(
            f"{args.config} configures a {config.role.value} server, not a {args.role} server",
            fix=f"watchkeep server run {'recording' if config.role.records else config.role.value} --config {args.config}",
        )
    configure_logging(config.name)
    process = server_for(config)
    if config.role.records:
        # uvloop carries the recording server's stream path (hundreds of camera and viewer
        # sockets) at a lower cost per frame than asyncio's own loop: bench/results/stream.md.
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(process.run())
    else:
        asyncio.run(process.run())
    return 0
