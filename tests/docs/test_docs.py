"""docs/ stands on its own and matches the code (issue 19): the generated parts are what
the code prints, the example files are complete and load, the systemd units run the right
command as the service account, and nothing points outside the project."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_support import DOCS, REPO, Administrator
from generate import GENERATED, generated_part

from watchkeep.doctor._checks_trust import CREATE_ACCOUNT
from watchkeep.servers import load_config

EXAMPLES = {"management.toml": "management", "recording.toml": "recording",
            "failover.toml": "failover", "mobile.toml": "mobile"}  # fmt: skip
UNITS = {
    "watchkeep-management.service": ("management", "/etc/watchkeep/ms.toml"),
    "watchkeep-recording@.service": ("recording", "/etc/watchkeep/%i.toml"),
    "watchkeep-mobile.service": ("mobile", "/etc/watchkeep/mobile.toml"),
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_generated_parts_are_what_the_code_prints(name: str) -> None:
    text = (DOCS / name).read_text()
    assert generated_part(text) == GENERATED[name]().strip(), (
        f"docs/{name} is out of date: run python tests/docs/generate.py"
    )


def test_every_rule_code_is_documented_as_the_doctor_lists_it() -> None:
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "watchkeep"), "doctor", "--list-checks", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    rules = (DOCS / "rules.md").read_text()
    for check in json.loads(listed.stdout):
        summary = re.sub(r"\s+", " ", check["summary"]).strip()
        assert f"| `{check['code']}` | {check['severity']} | {summary} |" in rules


def test_the_configuration_reference_shows_every_example_file_whole() -> None:
    text = (DOCS / "configuration.md").read_text()
    for name in EXAMPLES:
        body = (DOCS / "examples" / name).read_text()
        assert f"### `docs/examples/{name}`\n\n```toml\n{body}```\n" in text, name


def documented_keys() -> set[str]:
    text = (DOCS / "configuration.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))


def example_keys() -> set[str]:
    keys: set[str] = set()
    for name in EXAMPLES:
        for line in (DOCS / "examples" / name).read_text().splitlines():
            match = re.match(r"^#? ?([a-z_]+) = ", line)
            if match:
                keys.add(match.group(1))
    return keys


def test_every_key_is_both_explained_and_shown_in_an_example() -> None:
    ports = {"api", "data", "control", "http", "https", "publish"}  # the [ports] table lists these
    assert example_keys() - ports == documented_keys()


def test_every_example_file_loads_as_its_role(administrator: Administrator) -> None:
    etc = administrator.root / "etc"
    etc.mkdir()
    for secret in ("registration-key", "admin-password"):
        (etc / secret).write_text("s3cret\n")
    for name, role in EXAMPLES.items():
        copy = etc / name
        copy.write_text(administrator.substitute((DOCS / "examples" / name).read_text()))
        config = load_config(copy)
        assert config.role.value == role
        assert config.service_account == administrator.account
        assert config.certificate is not None
        assert config.trust_store is not None
        assert (config.management is None) == (role == "management")


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DOCS / "systemd" / name)
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_each_systemd_unit_runs_its_role_as_the_service_account(name: str) -> None:
    role, config = UNITS[name]
    service = unit(name)["Service"]
    assert service["User"] == service["Group"] == "watchkeep"
    assert service["ExecStart"] == (
        f"/opt/watchkeep/bin/watchkeep server run {role} --config {config}"
    )
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"
    assert f"[`{name}`](systemd/{name})" in (DOCS / "deployment.md").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    # The installed path and account of the units, swapped for this machine's (the test's
    # own watchkeep and account: the account `watchkeep` need not exist here).
    account = pwd.getpwuid(os.geteuid()).pw_name
    executable = Path(sys.executable).parent / "watchkeep"
    names = []
    for name in UNITS:
        text = (DOCS / "systemd" / name).read_text()
        text = text.replace("/opt/watchkeep/bin/watchkeep", str(executable))
        text = re.sub(r"^(User|Group)=watchkeep$", rf"\1={account}", text, flags=re.MULTILINE)
        target = tmp_path / name.replace("@.", "@rs1.")
        target.write_text(text)
        names.append(str(target))
    result = subprocess.run(
        ["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_deployment_guide_makes_the_account_the_doctor_asks_for() -> None:
    assert CREATE_ACCOUNT.format(account="watchkeep") in (DOCS / "deployment.md").read_text()


def test_the_documentation_points_nowhere_outside_the_project() -> None:
    pages = [REPO / "README.md", REPO / "SECURITY.md", *DOCS.rglob("*.md")]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text, page
        assert "DESIGN.md" not in text, page
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page}: link to {target}"
