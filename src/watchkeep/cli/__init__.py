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

# command -> the module whose `register(subparsers)` defines it, and its one-line help;
# ordered as in `--help`. Only the module of the command being run is imported.
_COMMANDS = {
    "ca": ("watchkeep.cli._ca", "the site certificate authority"),
    "cert": ("watchkeep.cli._cert", "server certificates"),
    "trust": ("watchkeep.cli._trust", "trust stores"),
    "server": ("watchkeep.cli._server", "run a watchkeep server"),
    "site": ("watchkeep.cli._site", "the site: servers and cameras"),
    "enroll": ("watchkeep.cli._enroll", "one-time tokens with which servers join the site"),
    "join": ("watchkeep.cli._join", "join the site with a token (on the new server's machine)"),
    "encryption": ("watchkeep.cli._site", "turn a server's encryption on or off"),
    "camera": ("watchkeep.cli._video", "the site's cameras"),
    "user": ("watchkeep.cli._user", "the site's users"),
    "view": ("watchkeep.cli._video", "watch a camera live (the Smart Client of this site)"),
    "playback": ("watchkeep.cli._video", "fetch recorded video of a time range"),
    "export": (
        "watchkeep.cli._export",
        "write a camera's recording of a time range as an MP4 file",
    ),
    "db": ("watchkeep.cli._db", "the databases: schema upgrades"),
    "demo": ("watchkeep.cli._demo", "run a complete encrypted site on this machine"),
    "doctor": ("watchkeep.cli._doctor", "check every requirement of the site"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, as for every other usage error.
        self.exit(2, f"{self.prog}: error: {message}; fix: see `{self.prog} --help`\n")


def _command_in(argv: Sequence[str]) -> str | None:
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--home":
            skip = True
        elif not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the module of the command it names is loaded."""
    parser = _Parser(
        prog="watchkeep",
        description="A video management system whose every link is secured by its own "
        "certificate authority.",
    )
    parser.add_argument("--version", action="version", version=f"watchkeep {__version__}")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="the watchkeep home directory (default: $WATCHKEEP_HOME or ~/.watchkeep)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser)
    groups.required = True
    command = _command_in(argv) if argv is not None else None
    modules = dict.fromkeys(
        module for name, (module, _help) in _COMMANDS.items() if command in (None, name)
    )
    for module in modules:
        importlib.import_module(module).register(groups)
    for name, (_module, text) in _COMMANDS.items():
        if name not in groups.choices:
            groups.add_parser(name, help=text)
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

    arguments = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    try:
        result: int = args.handler(args)
        return result
    except WatchkeepError as exc:
        print(f"watchkeep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("watchkeep: interrupted", file=sys.stderr)
        return 130
