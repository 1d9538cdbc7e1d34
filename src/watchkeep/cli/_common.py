"""Helpers shared by the command modules: the home, JSON and table output, passphrases."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watchkeep._home import Home, default_home
from watchkeep.errors import UsageError

__all__ = ["add_json", "call_site", "emit_json", "home_of", "print_table", "read_secret_file"]


def home_of(args: argparse.Namespace) -> Home:
    root = args.home if args.home is not None else default_home()
    return Home(Path(root).expanduser())


def call_site(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One call to the management API of this home's site, logged in; the decoded answer."""
    import asyncio

    from watchkeep.client import SiteClient

    async def run() -> Any:
        async with SiteClient(home_of(args)) as client:
            return await client.call(method, path, body)

    return asyncio.run(run())


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def read_secret_file(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the {what} file {path}: {exc.strerror}",
            fix=f"pass a readable file holding the {what}",
        ) from exc
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise UsageError(f"the {what} file {path} is empty", fix=f"write the {what} into {path}")
    return secret
