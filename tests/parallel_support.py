"""How the suite shares its machine among pytest-xdist workers (``-n`` in pyproject.toml).

- A module is one unit of work: its tests run on one worker, in order, so that a site the
  module shares (``scope="module"``) is started once.
- Modules that use a site shared beyond the module (a session fixture made with
  ``open_sites``: ``encrypted_site``, ``streams_site``, ``security_site``) make one unit
  with every other module that uses it, so that each is started once, as in a run on one
  worker, rather than once per worker (each recording its cameras till the end).
- A module with a test marked ``pytest.mark.xdist_group(NAME)`` makes one unit with every
  other such module of that name (``--dist loadgroup``): tests that would spoil each
  other's measurements if they ran side by side (the benchmarks' smoke tests) take turns.
- Units start in the order they were collected, and the long ones are collected first
  (the shared sites' units, then modules with a test marked ``slow``): they begin while
  the short ones fill the other workers, instead of one of them running alone at the end.
- ``pytest -n0`` runs every test in one process, with no workers.
- Figures a run writes (``RunFigures``) are added up over the workers by the controller,
  which writes them and prints them at the end, as a run on one worker does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling
from xdist.workermanage import WorkerController

_FIGURES_KEY = "watchkeep_figures"
_UNITS_FILE = "units.json"  # in the run's base temporary directory, above the workers'


class UnitScheduling(LoadScopeScheduling):
    """Units of work: the module, or the unit the workers put it in (``_UNITS_FILE``).

    (xdist's own ``xdist_group`` suffix on node ids does nothing with pytest 9, whose
    nodes no longer keep their id in ``_nodeid``: the workers write the units down
    instead, once they have collected, before the controller schedules.)"""

    def __init__(self, config: pytest.Config, log: Any) -> None:
        super().__init__(config, log)
        self._file = config._tmp_path_factory.getbasetemp() / _UNITS_FILE  # type: ignore[attr-defined]
        self._units: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._units is None:
            try:
                self._units = json.loads(self._file.read_text())
            except OSError:
                self._units = {}
        module = nodeid.split("::", 1)[0]
        return self._units.get(module, module)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> UnitScheduling | None:
    if config.getvalue("dist") != "loadgroup":
        return None
    config.option.loadscopereorder = False  # keep the order of the collection (below)
    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    units: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args:
            units.setdefault(module, f"group {group.args[0]}")
        for name in _shared_sites(item):
            units.setdefault(module, f"site {name}")
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}

    def rank(item: pytest.Item) -> int:
        shared = units.get(item.nodeid.split("::", 1)[0], "").startswith("site ")
        return 0 if shared else 1 if item.path in slow else 2

    items.sort(key=rank)  # stable: modules stay whole and in order
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # every worker finds the same units: the last one writes
        target = Path(config.option.basetemp).parent / _UNITS_FILE
        staged = target.with_name(f"{_UNITS_FILE}.{workerinput['workerid']}")
        staged.write_text(json.dumps(units))
        os.replace(staged, target)


def _shared_sites(item: pytest.Item) -> list[str]:
    """The session fixtures made with ``open_sites`` that ``item`` uses."""
    definitions = item._fixtureinfo.name2fixturedefs  # type: ignore[attr-defined]
    return sorted(
        name
        for name in item.fixturenames
        if name in definitions
        and name != "open_sites"  # (a suite's own, with its log checks)
        and definitions[name][-1].scope == "session"
        and "open_sites" in definitions[name][-1].argnames
    )


# -- figures of the run, added up over the workers ----------------------------------------


@dataclass
class RunFigures:
    """A JSON object of figures that a run writes to ``path`` and prints under ``title``.
    Each worker holds the figures of the tests it ran; the whole run's are their sum:
    numbers add up, lists follow one another, objects add up key by key, and null is
    nothing yet."""

    path: Path
    title: str
    figures: dict[str, Any] = field(default_factory=dict)


_REPORTED: dict[Path, RunFigures] = {}


def report_figures(config: pytest.Config, figures: RunFigures) -> None:
    """At the end of a session: the figures of this process's tests. On a worker they go
    to the controller; elsewhere they are written and printed."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        sent = workeroutput.setdefault(_FIGURES_KEY, [])
        sent.append({"path": str(figures.path), "title": figures.title, "figures": figures.figures})
        return
    _add(figures)


def _add(figures: RunFigures) -> None:
    known = _REPORTED.get(figures.path)
    if known is None:
        _REPORTED[figures.path] = RunFigures(figures.path, figures.title, dict(figures.figures))
    else:
        known.figures = _sum(known.figures, figures.figures)


def _sum(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _sum(a.get(k), b.get(k)) for k in [*a, *(k for k in b if k not in a)]}
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    raise TypeError(f"cannot add up figures {a!r} and {b!r}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: WorkerController, error: object) -> None:
    for sent in getattr(node, "workeroutput", {}).get(_FIGURES_KEY, []):
        _add(RunFigures(Path(sent["path"]), sent["title"], sent["figures"]))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):
        return
    for figures in _REPORTED.values():
        figures.path.parent.mkdir(parents=True, exist_ok=True)
        figures.path.write_text(json.dumps(figures.figures, indent=1) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for figures in _REPORTED.values():
        terminalreporter.section(figures.title)
        terminalreporter.write_line(json.dumps(figures.figures, indent=1))
