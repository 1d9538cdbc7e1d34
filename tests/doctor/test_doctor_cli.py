"""The `watchkeep doctor` command in-process: its options, exit statuses and output, on
sites laid out on disk without running them (only the local files are checked)."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from doctor_sites import lay_out

from watchkeep.cli import main
from watchkeep.doctor import CHECKS, DEFAULT_WARN_DAYS
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite


def doctor(home: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["--home", str(home), "doctor", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def laid_out(tmp_path: Path) -> LocalSite:
    """A site on disk, never started: servers/*/server.toml under the CA's home."""
    return lay_out(
        tmp_path / "site", [("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING)]
    )


def test_list_checks_names_every_code_with_severity_and_requirement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _err = doctor(tmp_path, "--list-checks", "--json", capsys=capsys)
    assert status == 0
    listed = json.loads(out)
    assert [c["code"] for c in listed] == [c.code for c in CHECKS]
    for entry in listed:
        assert entry["severity"] in ("error", "warning", "info")
        assert entry["requirement"]

    status, out, _err = doctor(tmp_path, "--list-checks", capsys=capsys)
    assert status == 0
    for check in CHECKS:
        assert check.code in out
        assert f"{check.code}: {check.requirement}" in out


def test_the_files_of_a_healthy_layout_give_no_findings(
    laid_out: LocalSite, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _err = doctor(laid_out.root, "--json", capsys=capsys)
    assert (status, json.loads(out)) == (0, [])


def test_a_readable_key_is_found_without_any_server_running(
    laid_out: LocalSite, capsys: pytest.CaptureFixture[str]
) -> None:
    laid_out.servers["rs1"].key.chmod(0o604)
    status, out, _err = doctor(laid_out.root, "--json", capsys=capsys)
    assert status == 1
    findings = json.loads(out)
    assert [(f["code"], f["severity"], f["server"]) for f in findings] == [
        ("key.service_account", "error", "rs1")
    ]
    assert set(findings[0]) >= {"code", "severity", "server", "message", "fix"}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another account needs root")
def test_the_service_account_is_the_one_that_runs_the_server(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given rs1 ran as the account nobody (its data directory is nobody's), its config
    # naming no service_account, while the doctor runs as root; every directory on the way
    # to rs1's key lets nobody through (pytest's tmp_path is root's alone, mode 0700)
    laid_out = lay_out(
        open_dir / "site", [("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING)]
    )
    rs1 = laid_out.servers["rs1"]
    for directory in rs1.key.parents:
        if directory == open_dir:
            break
        directory.chmod(directory.stat().st_mode | 0o001)
    data = rs1.directory / "data"
    data.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)

    # Then a key root owns is not the service account's
    status, out, _err = doctor(laid_out.root, "--json", capsys=capsys)
    findings = json.loads(out)
    assert (status, [(f["code"], f["server"]) for f in findings]) == (
        1,
        [("key.service_account", "rs1")],
    )
    assert findings[0]["fix"] == f"chown nobody {rs1.key}"

    # And once nobody owns it, all is well
    os.chown(rs1.key, nobody.pw_uid, nobody.pw_gid)
    status, out, _err = doctor(laid_out.root, "--json", capsys=capsys)
    assert (status, json.loads(out)) == (0, [])


def test_a_server_config_from_elsewhere_is_checked_against_this_site(
    laid_out: LocalSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a recording server laid out by another site, with its own CA
    other = lay_out(
        tmp_path / "other", [("ms9", ServerRole.MANAGEMENT), ("rs9", ServerRole.RECORDING)]
    )
    config = other.servers["rs9"].config

    # When this site's doctor is pointed at its config
    status, out, _err = doctor(
        laid_out.root, "--json", "--server-config", str(config), capsys=capsys
    )

    # Then its certificate does not chain to this site's CA, and it does not trust it
    assert status == 1
    assert sorted((f["code"], f["server"]) for f in json.loads(out)) == [
        ("cert.chain", "rs9"),
        ("trust.installed", "rs9"),
    ]


def test_the_warning_thresholds_are_an_option(
    laid_out: LocalSite, capsys: pytest.CaptureFixture[str]
) -> None:
    # The certificates of a new site have 90 days left: inside a 100-day threshold
    status, out, _err = doctor(laid_out.root, "--json", "--warn-days", "100,7", capsys=capsys)
    assert status == 0
    findings = json.loads(out)
    assert {(f["code"], f["severity"]) for f in findings} == {("cert.expiry_warning", "warning")}
    assert all("(the 100-day warning)" in f["message"] for f in findings)


def test_the_human_output_is_a_table_with_fixes(
    laid_out: LocalSite, capsys: pytest.CaptureFixture[str]
) -> None:
    key = laid_out.servers["rs1"].key
    key.chmod(0o640)
    status, out, _err = doctor(laid_out.root, capsys=capsys)
    assert status == 1
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("#"))
    assert header.split() == ["#", "severity", "code", "server", "message"]
    assert any(ln.split()[:4] == ["1", "error", "key.service_account", "rs1"] for ln in lines)
    assert f"  1  chmod 600 {key}" in out
    assert "1 finding(s): 1 error(s), 0 warning(s), 0 info" in out


@pytest.mark.parametrize("value", ["30,x", "0", "-1,7", ""])
def test_bad_warning_thresholds_are_a_usage_error(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(tmp_path), "doctor", "--warn-days", value])
    assert exit_info.value.code == 2
    assert "--warn-days" in capsys.readouterr().err


def test_a_missing_server_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = doctor(
        tmp_path, "--server-config", str(tmp_path / "nope.toml"), capsys=capsys
    )
    assert status == 2
    assert "nope.toml: no such file" in err


def test_nothing_to_check_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = doctor(tmp_path, capsys=capsys)
    assert status == 1
    assert out == ""
    assert err.startswith("watchkeep: error: nothing to check")
    assert "site connect" in err


def test_the_default_thresholds_are_the_servers_own() -> None:
    from watchkeep.pki._lifecycle import DEFAULT_WARN_DAYS as SERVERS_WARN_DAYS

    assert DEFAULT_WARN_DAYS == SERVERS_WARN_DAYS
