"""Bad input gets one clear line on stderr, the right exit status, and changes nothing.

Exit status 2 for usage errors (input that can never work), 1 for refused operations
(input that conflicts with the state of the site). In every case the home directory, the
output directory and the inventory (`cert list --all --json`) are exactly as before.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pki_support import run_cli, run_process, single_error_line, unchanged

from watchkeep._home import Home
from watchkeep.store import CertificateRecord

ISSUE = ["cert", "issue", "--role", "recording", "--key-type", "ecdsa-p256"]

INVALID_HOST_NAMES = {
    "space": "rs 1.site.example",
    "surrounding space": " rs1.site.example",
    "empty label": "rs1..site.example",
    "leading dot": ".rs1.site.example",
    "empty": "",
    "label over 63": "r" * 64 + ".site.example",
    "name over 253": ".".join(["abcdefghi"] * 26),
    "underscore": "rs_1.site.example",
    "leading hyphen": "-rs1.site.example",
    "trailing hyphen": "rs1-.site.example",
    "wildcard": "*.site.example",
    "non-ASCII": "caméra.site.example",
    "an IP address": "10.0.0.5",
}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("host", INVALID_HOST_NAMES.values(), ids=INVALID_HOST_NAMES.keys())
def test_invalid_host_name_is_a_usage_error(home: Home, out_dir: Path, host: str) -> None:
    with unchanged(home.root, out_dir):
        # --host=VALUE: a name that starts with a hyphen must reach watchkeep, not argparse
        ran = run_cli(home.root, *ISSUE, "--host", "ok.site.example", f"--host={host}",
                      "--out", out_dir)  # fmt: skip
    assert ran.code == 2
    single_error_line(ran, "invalid host name", repr(host))


USAGE_ERRORS = {
    "unknown role": (["cert", "issue", "--role", "transcoder", "--host", "a.example"], "role"),
    "unknown key type": ([*ISSUE, "--host", "a.example", "--key-type", "dsa-1024"], "key type"),
    "invalid IP": ([*ISSUE, "--host", "a.example", "--ip", "300.1.1.1"], "IP address"),
    "zero days": ([*ISSUE, "--host", "a.example", "--days", "0"], "--days"),
    "days not a number": ([*ISSUE, "--host", "a.example", "--days", "ninety"], "--days"),
    "no host": (ISSUE, "--host"),
    "bad duration": (["cert", "list", "--expiring-within", "30x"], "duration"),
    "unknown revocation reason": (
        ["cert", "revoke", "whatever", "--reason", "boredom"],
        "revocation reason",
    ),
    "unknown CA key type": (["ca", "init", "--name", "X", "--key-type", "rsa-1024"], "key type"),
}


@pytest.mark.parametrize(("argv", "needle"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_error(home: Home, out_dir: Path, argv: list[str], needle: str) -> None:
    with unchanged(home.root, out_dir):
        ran = run_cli(home.root, *argv, *(["--out", str(out_dir)] if argv[:2] == ISSUE[:2] else []))
    assert ran.code == 2
    single_error_line(ran, needle)


def openssl_csr(directory: Path, *extra: str) -> Path:
    key, csr = directory / "csr.key", directory / "server.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=csr.site.example", *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    key.unlink()
    return csr


def malformed_csrs(directory: Path) -> dict[str, Path]:
    good = openssl_csr(directory, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    text = good.read_text()
    cases: dict[str, Path] = {}

    def write(name: str, content: str | bytes) -> None:
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases[name] = path

    write("garbage.csr", "this is not a certificate signing request\n")
    write("empty.csr", b"")
    write("truncated.csr", text[: len(text) // 2])
    write("binary.csr", bytes(range(256)))
    # Flip one character on each line of the base64 body: the DER, the key or the
    # signature breaks, wherever the damage lands.
    lines = text.splitlines()
    for n in range(1, len(lines) - 1):
        damaged = list(lines)
        flipped = "A" if damaged[n][10] != "A" else "B"
        damaged[n] = damaged[n][:10] + flipped + damaged[n][11:]
        write(f"tampered-line-{n}.csr", "\n".join(damaged) + "\n")
    write("certificate-not-csr.csr", subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "/dev/null", "-subj", "/CN=x.example", "-days", "1"],
        capture_output=True, check=True,
    ).stdout)  # fmt: skip
    good.rename(directory / "weak-key.csr")  # replaced just below by an RSA-1024 one
    cases["weak-key.csr"] = openssl_csr(directory, "-newkey", "rsa:1024")
    cases["missing.csr"] = directory / "does-not-exist.csr"
    return cases


def test_malformed_csr_is_a_usage_error(home: Home, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "out" / "cert.pem"
    for name, csr in malformed_csrs(inputs).items():
        with unchanged(home.root, out.parent, inputs):
            ran = run_cli(home.root, "cert", "sign-csr", csr, "--role", "mobile", "--out", out)
        assert ran.code == 2, (name, ran)
        single_error_line(ran)


def test_malformed_pem_for_trust_install_is_a_usage_error(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    leaf = issue(home, "mobile", "m.site.example")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    for pem, needle in ((garbage, "garbage.pem"), (Path(leaf.cert_path), "not a CA")):
        with unchanged(home.root, tmp_path):
            ran = run_cli(home.root, "trust", "install", pem, "--store", store)
        assert ran.code == 2, ran
        single_error_line(ran, needle)
    assert not store.exists()


def test_errors_are_one_line_from_a_real_process_too(home: Home, tmp_path: Path) -> None:
    csr = tmp_path / "bad.csr"
    csr.write_text("nonsense\n")
    for argv, code in (
        ([*ISSUE, "--host", "bad_name.example"], 2),
        (["cert", "sign-csr", str(csr), "--role", "mobile"], 2),
        (["cert", "revoke", "recording-nowhere.example"], 1),
    ):
        with unchanged(home.root):
            ran = run_process(home.root, *argv, script=True)
        assert ran.code == code, ran
        line = single_error_line(ran)
        assert line.startswith("watchkeep: error: ")
        assert "; fix: " in line
        assert "Traceback" not in ran.err


# -- refused operations (exit 1) ----------------------------------------------------------


def test_duplicate_active_certificate_is_refused_unless_replaced(
    home: Home, issue: Callable[..., CertificateRecord], out_dir: Path
) -> None:
    first = issue(home, "recording", "rs1.site.example", "rs1-alias.site.example")
    for hosts in (
        ["rs1.site.example"],
        ["RS1.site.example."],
        ["rs9.site.example", "rs1-alias.site.example"],
    ):
        argv = [*ISSUE, *(a for h in hosts for a in ("--host", h)), "--out", out_dir]
        with unchanged(home.root, out_dir):
            ran = run_cli(home.root, *argv)
        assert ran.code == 1, ran
        single_error_line(ran, "already exists", first.name, "--replace")

    # The same host in another role is not a duplicate
    assert run_cli(home.root, *ISSUE[:3], "failover", "--host", "rs1.site.example",
                   "--key-type", "ecdsa-p256").code == 0  # fmt: skip
    # And --replace issues anew, superseding the first
    ran = run_cli(home.root, *ISSUE, "--host", "rs1.site.example", "--replace", "--json")
    assert ran.code == 0, ran.err
    old = run_cli(home.root, "cert", "show", first.serial, "--json").json()
    assert (old["status"], old["superseded_by"]) == ("superseded", ran.json()["serial"])


def test_revoking_an_unknown_name_is_refused(
    home: Home, issue: Callable[..., CertificateRecord]
) -> None:
    issue(home, "recording", "rs1.site.example")
    for name in ("recording-rs2.site.example", "0123456789abcdef"):
        with unchanged(home.root):
            ran = run_cli(home.root, "cert", "revoke", name)
        assert ran.code == 1
        single_error_line(ran, repr(name), "cert list")


def test_unwritable_out_directory_is_refused(home: Home, tmp_path: Path) -> None:
    # The process runs as root in CI, so permission bits would not stop it: a path through
    # a regular file cannot be a directory for anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for out in (blocker, blocker / "sub"):
        with unchanged(home.root, tmp_path):
            ran = run_cli(home.root, *ISSUE, "--host", "rs1.site.example", "--out", out)
        assert ran.code == 1, ran
        single_error_line(ran, "cannot write", str(blocker), "--out")
    # Nothing was recorded, so the host is still free
    assert run_cli(home.root, *ISSUE, "--host", "rs1.site.example").code == 0


def test_issuing_without_a_ca_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "no-ca"
    ran = run_cli(root, *ISSUE, "--host", "rs1.site.example")
    assert ran.code == 1
    single_error_line(ran, "no certificate authority", "ca init")
    assert not root.exists(), sorted(p.name for p in root.rglob("*"))


def test_reading_the_inventory_of_a_home_without_a_ca_is_refused_and_creates_nothing(
    tmp_path: Path,
) -> None:
    # A mistyped --home must not look like a site with no certificates.
    root = tmp_path / "mistyped"
    commands = (
        ("cert", "list"),
        ("cert", "list", "--json"),
        ("cert", "show", "rs1"),
        ("ca", "crl"),
    )
    for command in commands:
        ran = run_cli(root, *command)
        assert ran.code == 1, (command, ran)
        single_error_line(ran, "no certificate authority", str(root), "ca init")
        assert not root.exists(), (command, sorted(p.name for p in root.rglob("*")))


def test_listing_a_trust_store_that_does_not_exist_is_refused(home: Home, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-store"
    for extra in ((), ("--json",)):
        ran = run_cli(home.root, "trust", "list", "--store", missing, *extra)
        assert ran.code == 1, ran
        single_error_line(ran, "no trust store", str(missing), "trust install")
    assert not missing.exists()


def test_operations_the_state_of_a_certificate_forbids_are_refused(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    revoked = issue(home, "recording", "rs-revoked.site.example")
    assert run_cli(home.root, "cert", "revoke", revoked.name).code == 0
    csr = openssl_csr(tmp_path, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    signed = run_cli(home.root, "cert", "sign-csr", csr, "--role", "mobile", "--json")
    assert signed.code == 0, signed.err
    from_csr = signed.json()["name"]

    refusals = {
        "revoke twice": (["cert", "revoke", revoked.name], "already revoked"),
        "renew a revoked one": (["cert", "renew", revoked.name], "revoked"),
        "renew without the key": (["cert", "renew", from_csr], "CSR"),
        "export without the key": (
            ["cert", "export", from_csr, "--pkcs12", str(tmp_path / "x.p12")],
            "CSR",
        ),
        "outlive the CA": ([*ISSUE, "--host", "long.site.example", "--days", "4000"], "outlive"),
    }
    for what, (argv, needle) in refusals.items():
        with unchanged(home.root, tmp_path):
            ran = run_cli(home.root, *argv)
        assert ran.code == 1, (what, ran)
        single_error_line(ran, needle)
