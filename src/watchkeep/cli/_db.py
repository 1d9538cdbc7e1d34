"""`watchkeep db upgrade [--config FILE] [--json]`: bring a database to this release's
schema (servers and the CLI do it themselves when they open one; this does it ahead of
time, e.g. as the database's owner before the servers run as a lesser account)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of, print_table

__all__ = ["register"]


def register(groups: Any) -> None:
    db = groups.add_parser("db", help="the site and inventory databases: schema upgrades")
    sub = db.add_subparsers(dest="command", metavar="COMMAND", required=True)
    upgrade = sub.add_parser(
        "upgrade",
        help="upgrade the inventory of --home (WATCHKEEP_DATABASE_URL), or with --config the "
        "site database of that management server, to this release's schema",
    )
    upgrade.add_argument(
        "--config", type=Path, help="a management server's config: upgrade its site database"
    )
    add_json(upgrade)
    upgrade.set_defaults(handler=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    from watchkeep.errors import UsageError
    from watchkeep.servers import load_config
    from watchkeep.site import ServerRole
    from watchkeep.store import SCHEMAS, create_engine, upgrade

    if args.config is not None:
        config = load_config(args.config)
        if config.role is not ServerRole.MANAGEMENT:
            raise UsageError(
                f"{args.config} is the config of a {config.role.value} server, which keeps no "
                "site database",
                fix="pass the management server's config",
            )
        url = config.database_url or f"sqlite:///{config.data_dir / 'site.db'}"
        engine = create_engine(url, password_file=config.database_password_file)
        schema = SCHEMAS["site"]
    else:
        home = home_of(args)
        home.ensure()
        engine = create_engine(home.database_url)
        schema = SCHEMAS["inventory"]
    try:
        done = upgrade(engine, schema)
    finally:
        engine.dispose()
    if args.json:
        emit_json(done.as_json())
    else:
        print_table(
            ["SCHEMA", "DATABASE", "FROM", "TO", "NOTE"],
            [
                [
                    done.schema,
                    done.database,
                    done.before or "(new)",
                    done.after,
                    "made before migrations: recognised"
                    if done.stamped
                    else ("upgraded" if done.changed else "already current"),
                ]
            ],
        )
    return 0
