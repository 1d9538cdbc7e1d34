"""`watchkeep enroll ...`: one-time tokens with which new servers join the site
(administrators, after `watchkeep site connect`)."""

from __future__ import annotations

import argparse
from typing import Any

from watchkeep.cli._common import add_json, call_site, emit_json, print_table

__all__ = ["register"]


def register(groups: Any) -> None:
    enroll = groups.add_parser("enroll", help="one-time tokens with which servers join the site")
    sub = enroll.add_subparsers(dest="command", metavar="COMMAND", required=True)

    create = sub.add_parser(
        "create",
        help="a token for one new server: run the `watchkeep join` line it prints on that "
        "server's machine",
    )
    create.add_argument("--name", required=True, help="the server's name, e.g. rs9")
    create.add_argument(
        "--role", required=True, choices=["recording", "failover", "mobile"], help="what it is"
    )
    create.add_argument("--host", required=True, help="its host name (in its certificate)")
    create.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an IP address it is reached at (in its certificate; repeat for more)",
    )
    create.add_argument(
        "--ttl", default="1h", help="how long the token may be used (default 1h, at most 7d)"
    )
    add_json(create)
    create.set_defaults(handler=_create)

    listing = sub.add_parser("list", help="the pending tokens (never their secrets)")
    add_json(listing)
    listing.set_defaults(handler=_list)

    revoke = sub.add_parser("revoke", help="withdraw the pending token of a server")
    revoke.add_argument("name", help="the server's name")
    add_json(revoke)
    revoke.set_defaults(handler=_revoke)


def _create(args: argparse.Namespace) -> int:
    made = call_site(
        args,
        "POST",
        "/api/v1/enrollments",
        {"name": args.name, "role": args.role, "host": args.host, "ips": args.ip, "ttl": args.ttl},
    )
    if args.json:
        emit_json({k: made[k] for k in ("name", "role", "host", "expires_at", "token", "command")})
    else:
        print(made["token"])
        print(
            f"# single use, until {made['expires_at']}; on {made['host']}, run:\n"
            f"#   {made['command']}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    pending = call_site(args, "GET", "/api/v1/enrollments")
    if args.json:
        emit_json(pending)
        return 0
    print_table(
        ["name", "role", "host", "addresses", "expires", "made by"],
        [
            [
                e["name"],
                e["role"],
                e["host"],
                ",".join(e["ips"]) or "-",
                e["expires_at"],
                e["created_by"] or "-",
            ]
            for e in pending
        ],
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    result = call_site(args, "DELETE", f"/api/v1/enrollments/{args.name}")
    if args.json:
        emit_json(result)
    else:
        print(f"the pending token of {args.name} is withdrawn")
    return 0
