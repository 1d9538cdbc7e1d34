"""A trust.installed fix works on the host where the doctor prints it (issue 19).

On a server or client machine there is no CA home: the fix must not send the
administrator to `trust install` without a CA file (which answered "ca init", making an
unrelated CA, and the finding came back). It names the CA file to copy from the CA's home,
and `trust install CA_PEM --store DIR` run as printed clears the finding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pki_support import new_site, rs1_config, run_cli, single_error_line


def trust_findings(home: Path, config: Path) -> list[dict[str, str]]:
    ran = run_cli(home, "doctor", "--server-config", config, "--json")
    assert ran.code in (0, 1), ran.err
    return [f for f in ran.json() if f["code"] == "trust.installed"]


def test_the_fix_printed_on_a_machine_without_the_ca_clears_the_finding(tmp_path: Path) -> None:
    # Given the CA's home on one machine, and a recording server's machine that has its
    # certificate and key but no CA home and an empty trust store
    ca_home = new_site(tmp_path / "ca-home")
    ran = run_cli(ca_home.root, "cert", "issue", "--role", "recording",
                  "--host", "rs1.site.example", "--out", tmp_path / "rs1-tls", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    issued = ran.json()
    server_home = tmp_path / "rs1-home"
    trust = tmp_path / "rs1-trust"
    config = rs1_config(tmp_path, issued["chain_path"], issued["key_path"], trust=trust)

    # When the doctor runs on the server's machine
    findings = trust_findings(server_home, config)

    # Then its fix names the CA file to bring over and the command to run here
    assert [f["server"] for f in findings] == ["rs1"], findings
    fix = findings[0]["fix"]
    assert "`watchkeep ca show` prints its path and SHA-256 fingerprint" in fix
    # (or fetches it from a management server, checked by the fingerprint `ca show` prints:
    # nothing on this machine knows either yet)
    assert (
        f"watchkeep --home {server_home} trust install --from https://MS_HOST:9000 "
        f"--fingerprint HEX --store {trust};"
    ) in fix
    command = fix.split(" and run: ", 1)[1]
    assert command == f"watchkeep --home {server_home} trust install CA_PEM --store {trust}"

    # And `trust install` without the CA file answers with that form, not `ca init`
    refused = run_cli(server_home, "trust", "install", "--store", trust)
    assert refused.code == 1
    line = single_error_line(refused, "trust install CA_PEM --store", "watchkeep ca show")
    assert "ca init" not in line

    # And the fix, done as printed with the file `ca show` names, clears the finding
    shown = run_cli(ca_home.root, "ca", "show", "--json").json()
    copied = shutil.copy(shown["cert_path"], tmp_path / "site-ca.pem")
    argv = command.replace("CA_PEM", str(copied)).split()[1:]
    done = run_cli(Path(argv[1]), *argv[2:])
    assert done.code == 0, done.err
    assert shown["sha256_fingerprint"] in done.out
    assert trust_findings(server_home, config) == []
