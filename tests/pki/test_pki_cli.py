"""The command-line contract of `watchkeep ca`, `cert` and `trust` (docs/cli.md), end to end.

Each test drives the CLI (in-process through ``main(argv)`` or as a process) and checks the
result with something other than watchkeep: `openssl`, `curl`, cryptography's loaders.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pwd
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pki_support import (
    inventory_snapshot,
    openssl_verify,
    public_der,
    run_cli,
    run_process,
    single_error_line,
    unchanged,
)

from tool_support import free_port, openssl_s_server
from watchkeep._home import Home
from watchkeep.pki import load_certificate
from watchkeep.store import CertificateRecord

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def openssl_public_key(path: Path, kind: str) -> str:
    """The SubjectPublicKeyInfo of a key, CSR or certificate, as openssl prints it."""
    command = {
        "key": ["openssl", "pkey", "-pubout", "-in"],
        "cert": ["openssl", "x509", "-noout", "-pubkey", "-in"],
        "csr": ["openssl", "req", "-noout", "-pubkey", "-in"],
    }[kind]
    return subprocess.run([*command, str(path)], capture_output=True, text=True, check=True).stdout


# -- cert issue ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["in-process", "console-script"])
def test_issue_json_describes_the_files_it_wrote(home: Home, tmp_path: Path, how: str) -> None:
    out = tmp_path / "etc-watchkeep"
    argv = ["cert", "issue", "--role", "recording", "--host", "RS1.Site.Example",
            "--ip", "127.0.0.2", "--key-type", "ecdsa-p256", "--out", out, "--json"]  # fmt: skip
    ran = run_cli(home.root, *argv) if how == "in-process" else run_process(home.root, *argv)
    assert ran.code == 0, ran.err
    issued = ran.json()

    assert {"name", "serial", "sha256_fingerprint", "cert_path", "chain_path", "key_path",
            "not_after"} <= set(issued)  # fmt: skip
    assert issued["name"] == "recording-rs1.site.example"
    cert_path, chain_path, key_path = (
        Path(issued[k]) for k in ("cert_path", "chain_path", "key_path")
    )
    assert {p.parent for p in (cert_path, chain_path, key_path)} == {out.resolve()}
    cert = load_certificate(cert_path)

    # Every field describes the certificate on disk
    assert issued["serial"] == format(cert.serial_number, "x")
    assert (
        issued["sha256_fingerprint"]
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert ISO_UTC.fullmatch(issued["not_after"])
    assert issued["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    not_after = dt.datetime.fromisoformat(issued["not_after"].replace("Z", "+00:00"))
    assert dt.timedelta(days=89) < not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(days=90)
    # Serial: positive, at most 20 octets, from a CSPRNG (a 64-bit-short one is a 2^-95 event)
    assert 64 < cert.serial_number.bit_length() <= 159

    # The key is the certificate's, readable by its owner only
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert openssl_public_key(key_path, "key") == openssl_public_key(cert_path, "cert")

    # The chain is the leaf followed by the CA
    assert chain_path.read_bytes() == cert_path.read_bytes() + home.ca_cert.read_bytes()
    chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
    assert chain == [cert, load_certificate(home.ca_cert)]

    # And `cert show` reports the same thing
    shown = run_cli(home.root, "cert", "show", issued["name"], "--json").json()
    assert {k: shown[k] for k in issued if k != "days_left"} == {
        k: v for k, v in issued.items() if k != "days_left"
    }


def test_issue_as_root_gives_the_key_to_the_service_account(home: Home) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another account")
    ran = run_cli(home.root, "cert", "issue", "--role", "mobile", "--host", "m.site.example",
                  "--key-type", "ecdsa-p256", "--owner", "nobody", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    key = Path(ran.json()["key_path"])
    assert key.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# -- ca init ------------------------------------------------------------------------------


def test_ca_init_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    root = tmp_path / "home"
    first = run_process(root, "ca", "init", "--name", "First", "--key-type", "ecdsa-p256",
                        "--json", script=True)  # fmt: skip
    assert first.code == 0, first.err
    assert first.json()["name"] == "First"
    assert stat.S_IMODE((root / "ca" / "ca.key").stat().st_mode) == 0o600

    with unchanged(root):
        again = run_cli(root, "ca", "init", "--name", "Second", "--key-type", "ecdsa-p256")
    assert again.code == 1
    single_error_line(again, "already exists", "ca.pem")


def test_passphrase_protects_the_ca_key(tmp_path: Path) -> None:
    root = tmp_path / "home"
    secret, wrong = tmp_path / "ca.pass", tmp_path / "wrong.pass"
    secret.write_text("correct horse battery staple\n")
    wrong.write_text("Tr0ub4dor&3\n")
    ran = run_cli(root, "ca", "init", "--name", "Locked CA", "--key-type", "ecdsa-p256",
                  "--passphrase-file", secret, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json()["key_encrypted"] is True

    # The key on disk is encrypted: it loads with the passphrase only
    key_pem = (root / "ca" / "ca.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, password=None)
    serialization.load_pem_private_key(key_pem, password=b"correct horse battery staple")

    issue = ["cert", "issue", "--role", "mobile", "--host", "m.site.example",
             "--key-type", "ecdsa-p256"]  # fmt: skip
    # Without the passphrase, or with a wrong one: one clear line, exit 1, nothing written
    for extra in ([], ["--ca-passphrase-file", str(wrong)]):
        with unchanged(root):
            refused = run_cli(root, *issue, *extra)
        assert refused.code == 1, refused.err
        single_error_line(refused, "ca.key", "passphrase", "--ca-passphrase-file")
    # A passphrase file that does not exist is a usage error
    with unchanged(root):
        missing = run_cli(root, *issue, "--ca-passphrase-file", str(tmp_path / "nope"))
    assert missing.code == 2
    single_error_line(missing, "nope")

    # With it (as an option, or in the environment for a process), the CA signs
    assert run_cli(root, *issue, "--ca-passphrase-file", str(secret)).code == 0
    from_env = run_process(
        root, *issue[:5], "m2.site.example", *issue[6:],
        env={"WATCHKEEP_CA_PASSPHRASE_FILE": str(secret)},
    )  # fmt: skip
    assert from_env.code == 0, from_env.err


# -- cert sign-csr ------------------------------------------------------------------------


def test_sign_csr_keeps_the_key_where_it_was_made(home: Home, tmp_path: Path) -> None:
    # Given a key and a CSR made by openssl on the server
    key, csr = tmp_path / "server.key", tmp_path / "server.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=mobile.site.example",
         "-addext", "subjectAltName=DNS:mobile.site.example,DNS:m.site.example,IP:127.0.0.2"],
        check=True, capture_output=True,
    )  # fmt: skip
    key_before = (key.read_bytes(), key.stat().st_mtime_ns, stat.S_IMODE(key.stat().st_mode))
    out = tmp_path / "issued" / "mobile.pem"

    # When the CA signs it (as a process, the way an administrator would)
    ran = run_process(
        home.root, "cert", "sign-csr", csr, "--role", "mobile", "--out", out, "--json"
    )
    assert ran.code == 0, ran.err
    issued = ran.json()

    # Then watchkeep holds no key, the server's key is untouched and matches the certificate
    assert issued["key_path"] is None
    assert Path(issued["cert_path"]) == out.resolve()
    assert (
        key.read_bytes(),
        key.stat().st_mtime_ns,
        stat.S_IMODE(key.stat().st_mode),
    ) == key_before
    assert not list(out.parent.glob("*.key"))
    assert openssl_public_key(out, "cert") == openssl_public_key(csr, "csr")
    assert openssl_public_key(out, "cert") == openssl_public_key(key, "key")
    # And the certificate carries the CSR's names, for the role's purpose
    args = ["-CAfile", home.ca_cert, "-purpose", "sslserver", "-x509_strict"]
    for name in ("mobile.site.example", "m.site.example"):
        assert openssl_verify(out, *args, "-verify_hostname", name).ok
    assert openssl_verify(out, *args, "-verify_ip", "127.0.0.2").ok
    assert issued["hosts"] == ["mobile.site.example", "m.site.example"]


# -- cert renew ---------------------------------------------------------------------------


def test_renew_replaces_key_and_certificate_and_keeps_the_names(
    home: Home, issue: Callable[..., CertificateRecord]
) -> None:
    old = issue(home, "recording", "rs1.site.example", "rs1", ips=["10.0.0.21"], days=30)
    old_cert = Path(old.cert_path).read_bytes()
    old_key = load_private_key_pem(Path(old.key_path or ""))

    ran = run_cli(home.root, "cert", "renew", old.name, "--json")
    assert ran.code == 0, ran.err
    new = ran.json()

    # Same name, names and place; new serial, new key, same lifetime
    assert (new["name"], new["hosts"], new["ips"]) == (old.name, list(old.hosts), list(old.ips))
    assert (new["cert_path"], new["key_path"]) == (old.cert_path, old.key_path)
    assert new["serial"] != old.serial
    assert new["status"] == "active"
    renewed = load_certificate(Path(new["cert_path"]))
    new_key = load_private_key_pem(Path(new["key_path"]))
    assert public_der(new_key) == public_der(renewed) != public_der(old_key)
    assert renewed.not_valid_after_utc - renewed.not_valid_before_utc == dt.timedelta(
        days=30, hours=1
    )
    assert openssl_verify(new["cert_path"], "-CAfile", home.ca_cert, "-purpose", "sslserver",
                          "-verify_hostname", "rs1.site.example").ok  # fmt: skip

    # The old certificate is superseded by the new one and archived
    previous = run_cli(home.root, "cert", "show", old.serial, "--json").json()
    assert (previous["status"], previous["superseded_by"]) == ("superseded", new["serial"])
    assert (home.certs_dir / "archive" / f"{old.serial}.pem").read_bytes() == old_cert
    listed = run_cli(home.root, "cert", "list", "--json").json()
    assert [r["serial"] for r in listed] == [new["serial"]]


def load_private_key_pem(path: Path) -> object:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


# -- cert revoke and ca crl ---------------------------------------------------------------


def test_revoke_publishes_a_crl_that_names_the_serial(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    record = issue(home, "event", "events.site.example")
    ran = run_process(home.root, "cert", "revoke", record.name, "--reason", "key-compromise",
                      "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json()["status"] == "revoked"
    assert ran.json()["revocation_reason"] == "key-compromise"

    crl_path = tmp_path / "published" / "site.crl"
    ran = run_process(home.root, "ca", "crl", "--out", crl_path, "--json", script=True)
    assert ran.code == 0, ran.err
    text = subprocess.run(
        ["openssl", "crl", "-in", str(crl_path), "-noout", "-text", "-CAfile", str(home.ca_cert)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "verify OK" in text.stderr + text.stdout
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(record.serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert openssl_verify(record.cert_path, "-CAfile", home.ca_cert, "-crl_check",
                          "-CRLfile", crl_path).has_error(23)  # fmt: skip


# -- cert export --------------------------------------------------------------------------


def test_export_pkcs12_reads_back_with_openssl_and_cryptography(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    record = issue(home, "mobile", "mobile.site.example")
    password = tmp_path / "p12.pass"
    password.write_text("s3cret pkcs12\n")
    bundle = tmp_path / "mobile.p12"

    ran = run_cli(home.root, "cert", "export", record.name, "--pkcs12", bundle,
                  "--password-file", password, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600

    dumped = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-passin", f"file:{password}", "-nodes"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    certs = x509.load_pem_x509_certificates(dumped.encode())
    assert load_certificate(Path(record.cert_path)) in certs
    assert load_certificate(home.ca_cert) in certs
    key = serialization.load_pem_private_key(
        dumped[dumped.index("-----BEGIN PRIVATE KEY-----") :].encode(), password=None
    )
    assert public_der(key) == public_der(load_certificate(Path(record.cert_path)))

    loaded = pkcs12.load_pkcs12(bundle.read_bytes(), b"s3cret pkcs12")
    assert loaded.cert is not None
    assert loaded.key is not None
    assert loaded.cert.certificate == load_certificate(Path(record.cert_path))
    assert loaded.cert.friendly_name == record.name.encode()
    assert [c.certificate for c in loaded.additional_certs] == [load_certificate(home.ca_cert)]
    assert public_der(loaded.key) == public_der(loaded.cert.certificate)
    with pytest.raises(ValueError, match="Invalid password"):
        pkcs12.load_pkcs12(bundle.read_bytes(), b"wrong")


# -- cert list ----------------------------------------------------------------------------


def test_list_expiring_within_shows_only_what_expires_in_the_window(
    home: Home, issue: Callable[..., CertificateRecord]
) -> None:
    soon = issue(home, "recording", "rs-soon.site.example", days=10)
    later = issue(home, "recording", "rs-later.site.example", days=90)

    every = run_cli(home.root, "cert", "list", "--json").json()
    assert sorted(r["name"] for r in every) == sorted([soon.name, later.name])
    within = run_cli(home.root, "cert", "list", "--expiring-within", "30d", "--json").json()
    assert [r["name"] for r in within] == [soon.name]
    assert 9.9 < within[0]["days_left"] <= 10
    hours = run_cli(home.root, "cert", "list", "--expiring-within", "2400h", "--json").json()
    assert sorted(r["name"] for r in hours) == sorted([soon.name, later.name])

    table = run_cli(home.root, "cert", "list", "--expiring-within", "30d")
    assert table.code == 0
    assert soon.name in table.out
    assert later.name not in table.out


# -- trust --------------------------------------------------------------------------------


def curl(store: Path, host: str, port: int, address: str) -> int:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--output", "/dev/null", "--max-time", "10",
         "--capath", str(store),
         "--resolve", f"{host}:{port}:{address}", f"https://{host}:{port}/"],
        capture_output=True, check=False,
    ).returncode  # fmt: skip


def test_trust_store_works_for_curl_until_the_ca_is_removed(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    host, address = "ms.trust.example", "127.0.0.12"
    record = issue(home, "management", host)
    store = tmp_path / "trust"

    installed = run_cli(home.root, "trust", "install", "--store", store, "--json")
    assert installed.code == 0, installed.err
    ca_fingerprint = hashlib.sha256(
        load_certificate(home.ca_cert).public_bytes(serialization.Encoding.DER)
    ).hexdigest()
    listed = run_process(home.root, "trust", "list", "--store", store, "--json").json()
    assert [e["sha256_fingerprint"] for e in listed] == [ca_fingerprint]

    port = free_port(address)
    with openssl_s_server(
        address, port, record.cert_path, record.key_path or "", "-cert_chain", home.ca_cert, "-www"
    ):
        assert curl(store, host, port, address) == 0
        assert curl(store, "wrong.trust.example", port, address) == 60  # name not in the cert

        removed = run_cli(home.root, "trust", "remove", ca_fingerprint[:12], "--store", store)
        assert removed.code == 0, removed.err
        assert run_cli(home.root, "trust", "list", "--store", store, "--json").json() == []
        assert not [p for p in store.iterdir() if p.is_symlink()]
        assert curl(store, host, port, address) == 60  # no longer trusted

    # Removing what is not there is refused, and changes nothing
    with unchanged(home.root, store):
        again = run_cli(home.root, "trust", "remove", ca_fingerprint[:12], "--store", store)
    assert again.code == 1
    single_error_line(again, "match")


def test_inventory_rows_survive_a_reopen(
    home: Home, issue: Callable[..., CertificateRecord]
) -> None:
    record = issue(home, "failover", "fo1.site.example", ips=["10.0.0.31"])
    rows = inventory_snapshot(home.root)
    assert [(r["name"], r["role"], r["hosts"], r["ips"], r["status"]) for r in rows] == [
        (record.name, "failover", ["fo1.site.example"], ["10.0.0.31"], "active")
    ]
    from_process = run_process(home.root, "cert", "list", "--all", "--json").json()
    for row in from_process:
        row.pop("days_left")
    assert from_process == rows
