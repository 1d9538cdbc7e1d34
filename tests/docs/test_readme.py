"""The README's shell examples, run as written (issue 19): the documentation cannot drift
from the code. The substitutions (paths, addresses, the service account) are those of
docs_support.py, listed for readers in docs/configuration.md."""

from __future__ import annotations

import json

import pytest
from docs_support import REPO, Administrator, commands, shell_blocks

from watchkeep.testing import eventually

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()


def test_the_quick_start_commands_are_the_scripts() -> None:
    (block,) = shell_blocks(README, "## Quick start")
    assert [c.split("#")[0].strip() for c in commands(block)] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
    for command in commands(block):
        assert (REPO / command.split()[1]).is_file()


def test_the_certificate_authority_section_runs_and_revocation_takes_effect(
    administrator: Administrator,
) -> None:
    (block,) = shell_blocks(README, "## Using the certificate authority")
    lines = commands(block)
    verify = [n for n, line in enumerate(lines) if line.startswith("openssl verify")]
    assert len(verify) == 2, "an openssl verify before and after the revocation"

    for line in lines:
        administrator.run(line)

    for ran in administrator.ran[: verify[1]]:
        assert ran.code == 0, f"{ran.command}\n{ran.output}"
    assert ": OK" in administrator.ran[verify[0]].output
    after = administrator.ran[verify[1]]
    assert after.code != 0, f"a revoked certificate verified: {after.output}"
    assert "certificate revoked" in after.output


def site_status(admin: Administrator) -> dict[str, dict[str, object]]:
    ran = admin.run("watchkeep site status --json")
    assert ran.code == 0, ran.output
    admin.ran.pop()  # the test's own look, not the README's
    return {s["name"]: s for s in json.loads(ran.output)["servers"]}


def test_running_a_site_by_hand_as_the_readme_says(administrator: Administrator) -> None:
    admin = administrator
    (block, _cameras) = shell_blocks(README, "## Running a site")

    def all_online() -> None:
        def online() -> bool:
            servers = site_status(admin)
            assert set(servers) == set(admin.servers), servers
            assert all(s["online"] for s in servers.values()), servers
            return True

        eventually(online, what="every server online")

    def encrypted() -> None:
        def settled() -> bool:
            servers = site_status(admin)
            for server in servers.values():
                if server["role"] != "management":
                    assert (server["encryption"], server["encrypted_now"]) == (True, True), server
            return True

        eventually(settled, what="every server but the management server encrypted")

    waits = {
        "wait until every server is online": all_online,
        "wait until they show encrypted": encrypted,
    }
    for line in commands(block):
        ran = admin.run(line, waits=waits)
        assert ran.code == 0, f"{line}\n{ran.output}\n{admin.log_tails()}"

    # The four servers from docs/examples run, encrypted, and the doctor passes them
    servers = site_status(admin)
    assert sorted(servers) == ["fo1", "mobile", "ms", "rs1"]
    assert all(s["encryption"] and s["online"] for s in servers.values()), servers
    assert "0 error(s)" in admin.ran[-1].output

    # And every command of "Checking a site" runs against it without an error
    (checking,) = shell_blocks(README, "## Checking a site")
    for line in commands(checking):
        ran = admin.run(line)
        assert ran.code == 0, f"{line}\n{ran.output}"
    assert "checked 4 server(s) listed by the management server, 1 server config(s)" in (
        admin.ran[-1].output
    )
    # The log line the README promises, from the recording server with the camera
    assert "recordings: writing through " in admin.logs["rs1"].read_text()
