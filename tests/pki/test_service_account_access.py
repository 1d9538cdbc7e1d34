"""key.service_account as a real service account meets it (issue 19): the account must be
able to open its key, every directory on the way included, and nobody else may read it.

The end-to-end tests make a real system account with `useradd --system` and read the key
as that account with `runuser -u ACCOUNT -- cat KEY`, the check an administrator makes by
hand; they need root (CI runs as root) and are skipped, saying why, without it. The pure
tests of the permission check run everywhere.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pki_support import new_site, rs1_config, run_cli, single_error_line

from watchkeep._access import Account, blocked_for, other_readers

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not ROOT or shutil.which("useradd") is None or shutil.which("runuser") is None,
    reason="making a system account and reading a file as it needs root, useradd and runuser",
)


def fake_stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


# -- the permission check, pure -----------------------------------------------------------


def test_an_account_reads_by_owner_then_group_then_other_bits() -> None:
    account = Account("svc", 5000, frozenset({5000, 6000}))
    assert account.may(fake_stat(0o600, 5000, 0), 4)
    assert not account.may(fake_stat(0o060, 5000, 5000), 4), "the owner bits decide for the owner"
    assert account.may(fake_stat(0o040, 0, 6000), 4)
    assert not account.may(fake_stat(0o004, 0, 6000), 4), "the group bits decide for a member"
    assert account.may(fake_stat(0o001, 0, 0), 1)
    assert not account.may(fake_stat(0o700, 0, 0), 1)
    assert Account("root", 0, frozenset({0})).may(fake_stat(0o000, 5000, 5000), 4)


def test_other_readers_names_who_the_mode_lets_in() -> None:
    account = Account("svc", 5000, frozenset({5000}))
    assert other_readers(fake_stat(0o600, 5000, 5000), account) == []
    assert other_readers(fake_stat(0o604, 5000, 5000), account) == ["every account on this host"]
    readers = other_readers(fake_stat(0o600, 0, 0), account)
    assert readers == ["its owner root"]


def test_a_directory_that_cannot_be_searched_blocks_the_file_inside(open_dir: Path) -> None:
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    key = locked / "server.key"
    key.write_text("key")
    # An account that owns nothing here and is in no group of these files: only the
    # "other" bits apply to it, so the 0700 directory stops it.
    stranger = Account("stranger", 2**31 - 7, frozenset({2**31 - 7}))
    os.chmod(key, 0o644)
    blocked = blocked_for(key, stranger)
    assert blocked is not None
    assert blocked.path == locked
    assert not blocked.is_file
    assert "does not let stranger through" in blocked.reason
    locked.chmod(0o711)
    os.chmod(key, 0o600)
    blocked = blocked_for(key, stranger)
    assert blocked is not None
    assert blocked.is_file
    assert "is not readable by stranger" in blocked.reason


# -- with a real service account ----------------------------------------------------------


@pytest.fixture
def service_account() -> Iterator[str]:
    name = f"wkt{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def read_as(account: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", account, "--", "cat", str(path)], capture_output=True, text=True
    )


@needs_root
def test_cert_issue_out_makes_a_new_directory_the_owner_can_enter(
    service_account: str, open_dir: Path
) -> None:
    home = new_site(open_dir / "home")
    out = open_dir / "etc" / "watchkeep"
    ran = run_cli(home.root, "cert", "issue", "--role", "recording", "--host", "rs1.site.example",
                  "--owner", service_account, "--out", out, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    key = Path(ran.json()["key_path"])
    st = out.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (
        Account.named(service_account).uid,  # type: ignore[union-attr]
        0o700,
    )
    assert read_as(service_account, key).stdout.startswith("-----BEGIN PRIVATE KEY-----")
    refused = read_as("nobody", key)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr


@needs_root
def test_cert_issue_refuses_a_directory_its_owner_cannot_enter(
    service_account: str, open_dir: Path
) -> None:
    home = new_site(open_dir / "home")
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    ran = run_cli(home.root, "cert", "issue", "--role", "recording", "--host", "rs1.site.example",
                  "--owner", service_account, "--out", locked)  # fmt: skip
    assert ran.code == 1
    single_error_line(
        ran, "key.service_account", f"does not let {service_account} through",
        f"fix: chown {service_account} {locked}",
    )  # fmt: skip
    assert list(locked.iterdir()) == [], "nothing may be written before the refusal"


def issue_rs1(directory: Path, out: Path, owner: str | None) -> tuple[Path, dict[str, str]]:
    """A new site in ``directory``, rs1's certificate issued into ``out``, and rs1's config
    naming ``owner`` (or a service account this host does not have) as its account."""
    home = new_site(directory / "home")
    extra = ["--owner", owner] if owner else []
    ran = run_cli(home.root, "cert", "issue", "--role", "recording", "--host", "rs1.site.example",
                  *extra, "--out", out, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    issued = ran.json()
    account = owner or f"wkt{secrets.token_hex(3)}"
    config = rs1_config(directory, issued["chain_path"], issued["key_path"], account=account)
    return home.root, {**issued, "config": str(config), "account": account}


def service_account_findings(home: Path, config: Path) -> list[dict[str, str]]:
    ran = run_cli(home, "doctor", "--server-config", config, "--json")
    assert ran.code in (0, 1), ran.err
    return [f for f in ran.json() if f["code"] == "key.service_account"]


@needs_root
def test_doctor_reports_a_key_its_account_owns_but_cannot_reach(
    service_account: str, open_dir: Path
) -> None:
    # Given the layout an earlier `cert issue --owner` left: the key the account's, 0600,
    # in a directory root made with mode 0700
    out = open_dir / "etc-watchkeep"
    home, issued = issue_rs1(open_dir, out, service_account)
    config = Path(issued["config"])
    os.chown(out, 0, 0)
    assert read_as(service_account, Path(issued["key_path"])).returncode != 0

    # When the doctor checks that server's files, it says the account cannot open its key
    findings = service_account_findings(home, config)
    assert [f["server"] for f in findings] == ["rs1"], findings
    assert f"the service account {service_account} cannot open" in findings[0]["message"]
    assert findings[0]["fix"] == f"chown {service_account} {out} && chmod 700 {out}"

    # And the fix it prints, run as printed, makes the key readable by the account alone
    subprocess.run(["sh", "-c", findings[0]["fix"]], check=True)
    assert service_account_findings(home, config) == []
    assert read_as(service_account, Path(issued["key_path"])).returncode == 0


@needs_root
def test_doctor_names_who_else_can_read_a_group_readable_key(
    service_account: str, open_dir: Path
) -> None:
    home, issued = issue_rs1(open_dir, open_dir / "keys", service_account)
    key = Path(issued["key_path"])
    key.chmod(0o640)
    os.chown(key, -1, 0)  # group root: whoever is in it reads the key
    findings = service_account_findings(home, Path(issued["config"]))
    assert len(findings) == 1, findings
    assert "has mode 0640" in findings[0]["message"]
    assert "group root" in findings[0]["message"]
    assert findings[0]["fix"] == f"chmod 600 {key}"


@needs_root
def test_doctor_reports_a_service_account_that_does_not_exist(open_dir: Path) -> None:
    home, issued = issue_rs1(open_dir, open_dir / "keys", None)
    missing = issued["account"]
    findings = service_account_findings(home, Path(issued["config"]))
    assert len(findings) == 1, findings
    assert f"the service account {missing} that runs rs1 does not exist" in findings[0]["message"]
    assert "useradd --system" in findings[0]["fix"]
