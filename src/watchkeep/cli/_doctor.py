"""`watchkeep doctor`: check every rule of the site and say what to do about each finding.

Exit status 0 when no finding is an error, 1 otherwise (2 for usage errors).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of, print_table

__all__ = ["register"]

_DEFAULT_WARN_DAYS = "30,14,7"


def _warn_days(text: str) -> tuple[int, ...]:
    try:
        days = tuple(sorted({int(part) for part in text.split(",") if part.strip()}, reverse=True))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of whole days such as {_DEFAULT_WARN_DAYS}"
        ) from None
    if not days or any(d < 1 for d in days):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more positive numbers of days, such as {_DEFAULT_WARN_DAYS}"
        )
    return days


def register(groups: Any) -> None:
    doctor = groups.add_parser(
        "doctor",
        help="check certificates, trust stores, keys, encryption rules and TLS of the site",
        description="Check every rule of the site against the live site (through the "
        "management server, and by connecting to every TLS listener as a client would) and "
        "against the files of the servers configured on this host.",
    )
    doctor.add_argument(
        "--list-checks",
        action="store_true",
        help="list every check with its severity and the requirement it enforces",
    )
    doctor.add_argument(
        "--server-config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also check this server's config and files (repeatable; "
        "HOME/servers/*/server.toml are checked anyway)",
    )
    doctor.add_argument(
        "--warn-days",
        type=_warn_days,
        default=_warn_days(_DEFAULT_WARN_DAYS),
        metavar="DAYS",
        help=f"expiry warning thresholds in days, comma-separated (default {_DEFAULT_WARN_DAYS})",
    )
    add_json(doctor)
    doctor.set_defaults(handler=_doctor)


def _list_checks(as_json: bool) -> int:
    from watchkeep.doctor import CHECKS

    if as_json:
        emit_json([c.as_json() for c in CHECKS])
        return 0
    print_table(
        ["code", "severity", "rule"], [[c.code, c.severity.value, c.summary] for c in CHECKS]
    )
    print()
    for c in CHECKS:
        print(f"{c.code}: {c.requirement}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    if args.list_checks:
        return _list_checks(args.json)
    import asyncio

    from watchkeep.client import SiteConnection
    from watchkeep.doctor import Severity, collect_snapshot, run_checks
    from watchkeep.errors import HomeError, UsageError

    home = home_of(args)
    for path in args.server_config:
        if not path.is_file():
            raise UsageError(
                f"--server-config {path}: no such file",
                fix="pass the server's TOML config (the file given to `watchkeep server run`)",
            )
    if (
        not SiteConnection.path(home).exists()
        and not home.server_configs()
        and not args.server_config
    ):
        raise HomeError(
            f"nothing to check: {home.root} is not connected to a site and holds no server "
            "configs (servers/*/server.toml)",
            fix=f"watchkeep --home {home.root} site connect ..., or pass --server-config FILE",
        )
    cli = "watchkeep" if args.home is None else f"watchkeep --home {shlex.quote(str(home.root))}"
    snapshot = asyncio.run(
        collect_snapshot(home, server_configs=args.server_config, warn_days=args.warn_days, cli=cli)
    )
    findings = run_checks(snapshot)
    if args.json:
        emit_json([f.as_json() for f in findings])
    else:
        listed = len(snapshot.listed())
        print(
            f"checked {listed} server(s) listed by the management server, "
            f"{len(snapshot.local)} server config(s) on this host, "
            f"{len(snapshot.probes)} TLS listener(s)"
        )
        if findings:
            print()
            print_table(
                ["#", "severity", "code", "server", "message"],
                [
                    [n, f.severity.value, f.code, f.server, f.message]
                    for n, f in enumerate(findings, 1)
                ],
            )
            print("\nfixes:")
            for n, f in enumerate(findings, 1):
                print(f"{n:>3}  {f.fix}")
        counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
        print(
            f"\n{len(findings)} finding(s): {counts[Severity.ERROR]} error(s), "
            f"{counts[Severity.WARNING]} warning(s), {counts[Severity.INFO]} info"
        )
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0
