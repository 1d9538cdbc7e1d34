"""`watchkeep trust ...`: put the site CA (and its CRL) into the trust stores of verifiers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of, print_table

__all__ = ["publish_crl", "register"]


def register(groups: Any) -> None:
    trust = groups.add_parser("trust", help="trust stores")
    sub = trust.add_subparsers(dest="command", metavar="COMMAND", required=True)

    install = sub.add_parser("install", help="trust a CA (default: this site's CA and its CRL)")
    install.add_argument("ca_pem", nargs="?", type=Path, metavar="CA_PEM")
    install.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="fetch the CA from the management server (https://HOST:9000); it is installed "
        "only if its SHA-256 fingerprint is --fingerprint",
    )
    install.add_argument(
        "--fingerprint",
        metavar="HEX",
        help="the CA's SHA-256 fingerprint, as `watchkeep ca show` prints it on the CA's machine",
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, help="directory store (default HOME/trust)")
    where.add_argument("--system", action="store_true", help="the OS trust store (root)")
    add_json(install)
    install.set_defaults(handler=_install)

    listing = sub.add_parser("list", help="the CAs a trust store holds")
    where = listing.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path)
    where.add_argument("--system", action="store_true")
    add_json(listing)
    listing.set_defaults(handler=_list)

    remove = sub.add_parser("remove", help="stop trusting a CA")
    remove.add_argument("fingerprint", metavar="SHA256_FINGERPRINT", help="or a unique prefix")
    remove.add_argument("--store", type=Path)
    add_json(remove)
    remove.set_defaults(handler=_remove)


def _store(args: argparse.Namespace) -> Any:
    from watchkeep.trust import DirectoryTrustStore, SystemTrustStore

    if getattr(args, "system", False):
        return SystemTrustStore()
    return DirectoryTrustStore(args.store if args.store else home_of(args).trust_dir)


def _install(args: argparse.Namespace) -> int:
    from watchkeep.errors import TrustError
    from watchkeep.trust import DirectoryTrustStore, read_pem_bundle, remember_store

    home = home_of(args)
    if args.source is not None or args.fingerprint is not None:
        return _install_fetched(args)
    source = args.ca_pem or home.ca_cert
    if args.ca_pem is None and not home.ca_cert.exists():
        # A server or client machine: the site's CA lives in the CA's home elsewhere, and
        # making a CA here (`ca init`) would make another site's.
        where = "--system" if args.system else f"--store {args.store or home.trust_dir}"
        raise TrustError(
            f"no CA certificate to install: {home.root} is not the home of the site's "
            "certificate authority, so name the CA file to trust",
            fix="copy the site CA certificate to this host (on the CA's home, `watchkeep ca "
            "show` prints its path and SHA-256 fingerprint; compare it with the fingerprint "
            f"this command prints) and run: watchkeep trust install CA_PEM {where}",
        )
    certs = read_pem_bundle(source)
    store = _store(args)
    installed = [store.install(c) for c in certs]
    crl = None
    if args.ca_pem is None and isinstance(store, DirectoryTrustStore) and home.crl.exists():
        crl = store.install_crl(home.crl.read_bytes())
        # From now on every CRL this CA publishes (cert revoke, ca crl) is written here too.
        remember_store(home, store.path)
    if args.json:
        emit_json(
            {"installed": [e.as_json() for e in installed], "crl_path": str(crl) if crl else None}
        )
    else:
        for e in installed:
            print(f"trusted {e.subject} ({e.sha256_fingerprint}) in {e.path}")
        if crl:
            print(f"CRL installed as {crl}")
    return 0


def _install_fetched(args: argparse.Namespace) -> int:
    """trust install --from URL --fingerprint HEX: the CA as the management server serves
    it, taken only when its fingerprint is the one given."""
    from watchkeep.errors import UsageError
    from watchkeep.trust import fetch_ca_by_fingerprint

    if args.source is None or args.fingerprint is None or args.ca_pem is not None:
        raise UsageError(
            "--from and --fingerprint go together, without CA_PEM",
            fix="watchkeep trust install --from https://ms.site.example:9000 --fingerprint "
            "HEX (the fingerprint `watchkeep ca show` prints on the CA's machine)",
        )
    cert = fetch_ca_by_fingerprint(args.source, args.fingerprint)
    entry = _store(args).install(cert)
    if args.json:
        emit_json({"installed": [entry.as_json()], "crl_path": None})
    else:
        print(
            f"trusted {entry.subject} ({entry.sha256_fingerprint}) from {args.source} in "
            f"{entry.path}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from watchkeep.errors import TrustError
    from watchkeep.trust import DirectoryTrustStore

    store = _store(args)
    if isinstance(store, DirectoryTrustStore) and not store.path.is_dir():
        # A mistyped path must not read as a store that trusts nothing.
        raise TrustError(
            f"no trust store at {store.path}: the directory does not exist",
            fix=f"check the path, or create it: watchkeep trust install --store {store.path}",
        )
    entries = store.entries()
    if args.json:
        emit_json([e.as_json() for e in entries])
    else:
        print_table(
            ["subject", "sha256 fingerprint", "not after", "file"],
            [[e.subject, e.sha256_fingerprint, e.as_json()["not_after"], e.path] for e in entries],
        )
    return 0


def _remove(args: argparse.Namespace) -> int:
    entry = _store(args).remove(args.fingerprint)
    if args.json:
        emit_json(entry.as_json())
    else:
        print(f"removed {entry.subject} ({entry.sha256_fingerprint}) from {entry.path.parent}")
    return 0


def publish_crl(home: Any, say: Any) -> list[str]:
    """Write the CA's new CRL into every trust store its home manages; the stores written.

    A store that cannot be written is an error after the others are done: a verifier
    reading it would still accept what was revoked.
    """
    from watchkeep.errors import TrustError
    from watchkeep.trust import refresh_crl_in_stores

    results = refresh_crl_in_stores(home)
    for done in results:
        if done.error is None:
            say(f"CRL refreshed in the trust store {done.store}")
    failed = [r for r in results if r.error is not None]
    if failed:
        raise TrustError(
            f"the new CRL is not in the trust store {failed[0].store}: {failed[0].error}"
            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
            + "; whoever verifies with it still accepts what was revoked",
            fix=f"make it writable and run: watchkeep --home {home.root} trust install "
            f"--store {failed[0].store}",
        )
    return [str(r.store) for r in results]
