"""`watchkeep user ...`: who may log in to the site, and to which cameras."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import quote

from watchkeep.cli._common import add_json, call_site, emit_json, print_table, read_secret_file


def register(groups: Any) -> None:
    user = groups.add_parser("user", help="the site's users")
    sub = user.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = sub.add_parser(
        "add",
        help="add a user, or set an existing user's password and rights (its open "
        "sessions end: their tokens are revoked)",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password-file", type=Path, required=True, help="a file holding the password"
    )
    add.add_argument("--role", choices=("operator", "administrator"), default="operator")
    add.add_argument(
        "--camera",
        action="append",
        metavar="CAMERA",
        help="a camera the user may watch (repeat; default: every camera)",
    )
    add_json(add)
    add.set_defaults(handler=_add)
    listing = sub.add_parser("list", help="the users, their roles and cameras")
    add_json(listing)
    listing.set_defaults(handler=_list)
    remove = sub.add_parser("remove", help="remove a user (its open sessions end)")
    remove.add_argument("name", metavar="NAME")
    add_json(remove)
    remove.set_defaults(handler=_remove)


def _show(users: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(users)
        return
    print_table(
        ["user", "role", "cameras"],
        [
            [
                u["name"],
                u["role"],
                "every camera" if u["cameras"] is None else ",".join(u["cameras"]),
            ]
            for u in users
        ],
    )


def _add(args: argparse.Namespace) -> int:
    password = read_secret_file(args.password_file, "password")
    assert password is not None
    body = {
        "name": args.name,
        "password": password.decode(),
        "role": args.role,
        "cameras": args.camera,
    }
    added = call_site(args, "POST", "/api/v1/users", body)
    if args.json:
        emit_json(added)
    else:
        _show([added], as_json=False)
    return 0


def _list(args: argparse.Namespace) -> int:
    _show(call_site(args, "GET", "/api/v1/users"), args.json)
    return 0


def _remove(args: argparse.Namespace) -> int:
    call_site(args, "DELETE", f"/api/v1/users/{quote(args.name, safe='')}")
    if args.json:
        emit_json({"removed": args.name})
    else:
        print(f"removed user {args.name}; its sessions are over")
    return 0
