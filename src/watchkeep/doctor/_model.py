"""Findings as data, and what a check is: a rule code, a severity, the requirement it
enforces and a pure function over a snapshot of the site."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watchkeep.doctor._snapshot import SiteSnapshot

__all__ = ["Check", "Finding", "Issue", "Severity", "check"]


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most severe, so that sorting puts errors first."""
        return list(Severity).index(self)


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found: which rule, how bad, on which server, why, the fix."""

    code: str
    severity: Severity
    server: str
    message: str
    fix: str
    requirement: str

    def as_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "server": self.server,
            "message": self.message,
            "fix": self.fix,
            "requirement": self.requirement,
        }


@dataclass(frozen=True)
class Issue:
    """What a check reports; its check adds the code, severity and requirement."""

    server: str
    message: str
    fix: str


CheckFunction = Callable[["SiteSnapshot"], Iterable[Issue]]


@dataclass(frozen=True)
class Check:
    """One rule: ``summary`` is the rule as docs/rules.md states it, ``requirement`` the
    sentence of the specification (or watchkeep's own where the specification is silent)
    that it enforces."""

    code: str
    severity: Severity
    summary: str
    requirement: str
    run: CheckFunction

    def findings(self, snapshot: SiteSnapshot) -> list[Finding]:
        found: list[Finding] = []
        for issue in self.run(snapshot):
            finding = Finding(
                self.code, self.severity, issue.server, issue.message, issue.fix, self.requirement
            )
            if finding not in found:
                found.append(finding)
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "summary": self.summary,
            "requirement": self.requirement,
        }


def check(
    code: str, severity: Severity, *, summary: str, requirement: str
) -> Callable[[CheckFunction], Check]:
    """Make a check of a function that yields the issues it finds in a snapshot."""

    def wrap(function: CheckFunction) -> Check:
        return Check(
            code, severity, " ".join(summary.split()), " ".join(requirement.split()), function
        )

    return wrap
