"""`watchkeep site ...` and `watchkeep encryption ...`: the site as its management server
describes it, and the per-server encryption switch."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of, print_table

__all__ = ["register", "register_encryption"]


def register(groups: Any) -> None:
    register_encryption(groups)
    site = groups.add_parser("site", help="the site: servers and cameras")
    sub = site.add_subparsers(dest="command", metavar="COMMAND", required=True)

    status = sub.add_parser(
        "status", help="every server and camera, with encryption and certificates"
    )
    add_json(status)
    status.set_defaults(handler=_status)

    connect = sub.add_parser("connect", help="tell this home where its management server is")
    connect.add_argument("--host", required=True, help="the management server's host name")
    connect.add_argument("--address", required=True, help="its IP address")
    connect.add_argument("--port", type=int, default=9000)
    connect.add_argument("--user", default="admin")
    connect.add_argument("--password-file", type=Path, required=True)
    connect.add_argument("--trust-store", type=Path, help="default HOME/trust")
    connect.add_argument(
        "--encrypted", action="store_true", help="the management server speaks TLS"
    )
    connect.add_argument(
        "--fingerprint",
        metavar="HEX",
        help="first trust the site CA the management server serves, if its SHA-256 "
        "fingerprint is this one (as `watchkeep ca show` prints it on the CA's machine)",
    )
    add_json(connect)
    connect.set_defaults(handler=_connect)


def register_encryption(groups: Any) -> None:
    enc = groups.add_parser("encryption", help="turn a server's encryption on or off")
    enc.add_argument("action", choices=["enable", "disable"])
    enc.add_argument("--server", required=True, help="the server's name (see site status)")
    add_json(enc)
    enc.set_defaults(handler=_encryption)


def _connect(args: argparse.Namespace) -> int:
    from watchkeep._names import validate_host_name
    from watchkeep.client import SiteClient, SiteConnection

    home = home_of(args)
    home.ensure()
    connection = SiteConnection(
        name="management",
        host=validate_host_name(args.host),
        address=args.address,
        port=args.port,
        encryption=args.encrypted,
        user=args.user,
        password_file=str(args.password_file.resolve()),
        trust_store=str((args.trust_store or home.trust_dir).resolve()),
    )

    if args.fingerprint is not None:
        from watchkeep.trust import DirectoryTrustStore, fetch_ca_by_fingerprint

        scheme = "https" if args.encrypted else "http"
        where = args.address if ":" not in args.address else f"[{args.address}]"
        cert = fetch_ca_by_fingerprint(f"{scheme}://{where}:{args.port}", args.fingerprint)
        DirectoryTrustStore(Path(connection.trust_store)).install(cert)

    async def check() -> SiteConnection:
        client = SiteClient(home, connection)
        async with client:
            # The site's other management servers (one PostgreSQL database): the CLI turns
            # to them when this one does not answer.
            others = [
                {"name": s["name"], "host": s["host"], "address": s["address"],
                 "port": s["ports"]["api"]}
                for s in (await client.status())["servers"]
                if s["role"] == "management" and s["name"] != client.management_name
            ]  # fmt: skip
        return replace(client.connection, name=client.management_name, others=others)

    connection = asyncio.run(check())
    connection.save(home)
    if args.json:
        emit_json(
            {
                "management_server": connection.name,
                "encryption": connection.encryption,
                "other_management_servers": [o["name"] for o in connection.others],
            }
        )
    else:
        print(
            f"connected to {connection.name} at {connection.host} ({connection.address}:{connection.port})"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from watchkeep.client import SiteClient

    async def fetch() -> dict[str, Any]:
        async with SiteClient(home_of(args)) as client:
            return await client.status()

    status = asyncio.run(fetch())
    if args.json:
        emit_json(status)
        return 0
    rows = []
    for s in status["servers"]:
        cert = s.get("certificate") or {}
        rows.append(
            [
                s["name"],
                s["role"],
                s["host"],
                s["address"],
                ",".join(f"{k}={v}" for k, v in s["ports"].items()),
                "on" if s["encryption"] else "off",
                "online" if s["online"] else "OFFLINE",
                _days_left(cert),
                _renewal(s.get("renewal")),
            ]
        )
    print_table(
        [
            "server",
            "role",
            "host",
            "address",
            "ports",
            "encryption",
            "state",
            "cert days left",
            "next renewal",
        ],
        rows,
    )
    if status["cameras"]:
        print()
        print_table(
            ["camera", "recording server", "assigned to", "problem"],
            [
                [c["name"], c["recording_server"], c["assigned_server"], c.get("problem") or "-"]
                for c in status["cameras"]
            ],
        )
    return 0


def _encryption(args: argparse.Namespace) -> int:
    from watchkeep.client import SiteClient

    enable = args.action == "enable"

    async def change() -> dict[str, Any]:
        async with SiteClient(home_of(args)) as client:
            return await client.set_encryption(args.server, enable)

    result = asyncio.run(change())
    if args.json:
        emit_json(result)
    else:
        print(f"encryption {'on' if enable else 'off'} for {args.server}")
    return 0


def _renewal(renewal: dict[str, Any] | None) -> str:
    """When the server renews its certificate next, and its failed attempts if any."""
    if not renewal:
        return "-"
    if renewal.get("rejoin"):
        return f"CANNOT RENEW: {renewal['rejoin']}"
    when = str(renewal.get("next_renewal_at") or "-")
    failures = renewal.get("failures") or 0
    if failures:
        return f"{when} ({failures} FAILED, retry {renewal.get('retry_at') or '-'})"
    return when


def _days_left(cert: dict[str, Any] | None) -> str:
    if not cert:
        return "-"
    text = f"{cert['days_left']:.0f}"
    level = cert.get("expiry_warning")
    if level == 0:
        return f"{text} EXPIRED"
    if level is not None:
        return f"{text} (under {level}: renew)"
    return text
