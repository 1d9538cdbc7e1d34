"""`cert revoke` reaches every trust store the CA's home manages (issue 19).

The servers fetch a new CRL from the management server; the stores filled from the CA's
home by hand (its own HOME/trust and each `trust install --store DIR`) had nobody to
refresh them, so `openssl verify -CApath STORE -crl_check` kept saying OK for a revoked
certificate. openssl is the judge here, as in the README's own example.
"""

from __future__ import annotations

from pathlib import Path

from pki_support import Verified, new_site, openssl_verify, run_cli


def verify(store: Path, cert: str) -> Verified:
    return openssl_verify(
        cert, "-CApath", store, "-crl_check", "-purpose", "sslserver",
        "-verify_hostname", "rs1.site.example",
    )  # fmt: skip


def test_a_revoked_certificate_fails_verification_with_every_managed_store(
    tmp_path: Path,
) -> None:
    # Given a CA's home whose own store and a server's store were filled from it
    home = new_site(tmp_path / "home")
    server_store = tmp_path / "etc" / "trust"
    ran = run_cli(home.root, "cert", "issue", "--role", "recording", "--host", "rs1.site.example",
                  "--out", tmp_path / "etc", "--json")  # fmt: skip
    cert = ran.json()["cert_path"]
    assert run_cli(home.root, "trust", "install").code == 0
    assert run_cli(home.root, "trust", "install", "--store", server_store).code == 0
    gone = tmp_path / "gone"
    assert run_cli(home.root, "trust", "install", "--store", gone).code == 0
    for store in (home.trust_dir, server_store):
        before = verify(store, cert)
        assert before.ok, before.output

    # When the certificate is revoked (and one store was removed meanwhile)
    for file in gone.iterdir():
        file.unlink()
    gone.rmdir()
    revoked = run_cli(home.root, "cert", "revoke", "recording-rs1.site.example")
    assert revoked.code == 0, revoked.err

    # Then openssl refuses it with either store, and the command said where it wrote
    for store in (home.trust_dir, server_store):
        after = verify(store, cert)
        assert not after.ok
        assert "certificate revoked" in after.output
        assert f"CRL refreshed in the trust store {store}" in revoked.out
    assert str(gone) not in revoked.out
    assert not gone.exists(), "a store that is gone is forgotten, not made again"


def test_a_store_the_crl_cannot_reach_is_an_error_that_names_it(tmp_path: Path) -> None:
    home = new_site(tmp_path / "home")
    store = tmp_path / "trust"
    ran = run_cli(home.root, "cert", "issue", "--role", "recording", "--host", "rs1.site.example",
                  "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert run_cli(home.root, "trust", "install", "--store", store).code == 0
    # The CRL's place in the store taken by a directory: renaming over it fails, as root too
    crl = next(store.glob("*.r0"))
    crl.unlink()
    crl.mkdir()

    revoked = run_cli(home.root, "cert", "revoke", "recording-rs1.site.example")

    assert revoked.code == 1
    line = revoked.err_lines[-1]
    assert f"the new CRL is not in the trust store {store}" in line
    assert f"fix: make it writable and run: watchkeep --home {home.root} trust install" in line
    assert "revoked" in revoked.out, "the revocation itself is reported before the error"
