"""The `watchkeep` command line: ``main(argv) -> int``, one module per command group.

Command modules are imported only when their group runs, so that a short command such as
`watchkeep cert issue` starts quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from watchkeep import __version__

__all__ = ["main"]

# group name -> module that defines `register(subparsers)`; ordered as in `--help`.
_GROUPS = {
    "ca": "watchkeep.cli._ca",
    "cert": "watchkeep.cli._cert",
    "trust": "watchkeep.cli._trust",
    "server": "watchkeep.cli._server",
    "site": "watchkeep.cli._site",
    "video": "watchkeep.cli._video",
    "demo": "watchkeep.cli._demo",
    "doctor": "watchkeep.cli._doctor",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, as for every other usage error.
        self.exit(2, f"{self.prog}: error: {message}; fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="watchkeep", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"watchkeep {__version__}")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the watchkeep home directory (default: $WATCHKEEP_HOME or ~/.watchkeep)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser)
    groups.required = True
    for module in _GROUPS.values():
        importlib.import_module(module).register(groups)
    importlib.import_module("watchkeep.cli._site").register_encryption(groups)
    _accept_home_after_command(parser)
    return parser


def _accept_home_after_command(parser: argparse.ArgumentParser) -> None:
    """Every command takes --home, after its name too (`watchkeep demo --home DIR`).

    SUPPRESS: a command that is not given --home leaves the value given before it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                command.add_argument(
                    "--home", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
                )
                _accept_home_after_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    from watchkeep.errors import WatchkeepError

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        result: int = args.handler(args)
        return result
    except WatchkeepError as exc:
        print(f"watchkeep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("watchkeep: interrupted", file=sys.stderr)
        return 130
