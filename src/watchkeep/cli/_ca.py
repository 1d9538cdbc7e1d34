"""`watchkeep ca ...`: create and describe the site certificate authority, publish its CRL."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of, print_table, read_secret_file

__all__ = ["add_ca_passphrase", "ca_passphrase", "register"]


def add_ca_passphrase(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-passphrase-file",
        type=Path,
        default=None,
        help="file holding the CA key's passphrase (or $WATCHKEEP_CA_PASSPHRASE_FILE)",
    )


def ca_passphrase(args: argparse.Namespace) -> bytes | None:
    path = args.ca_passphrase_file
    if path is None and os.environ.get("WATCHKEEP_CA_PASSPHRASE_FILE"):
        path = Path(os.environ["WATCHKEEP_CA_PASSPHRASE_FILE"])
    return read_secret_file(path, "CA passphrase")


def register(groups: Any) -> None:
    ca = groups.add_parser("ca", help="the site certificate authority")
    sub = ca.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="create the site CA")
    init.add_argument("--name", required=True, help="the CA's common name")
    init.add_argument("--key-type", default="rsa-3072", help="rsa-2048, rsa-3072 or ecdsa-p256")
    init.add_argument("--days", type=int, default=3652, help="validity in days (default 3652)")
    init.add_argument(
        "--passphrase-file", type=Path, help="encrypt the CA key with this passphrase"
    )
    add_json(init)
    init.set_defaults(handler=_init)

    show = sub.add_parser("show", help="subject, fingerprint, validity and path of the CA")
    add_json(show)
    show.set_defaults(handler=_show)

    crl = sub.add_parser("crl", help="sign a fresh CRL")
    crl.add_argument("--out", type=Path, help="also write it to this file")
    add_ca_passphrase(crl)
    add_json(crl)
    crl.set_defaults(handler=_crl)


def _init(args: argparse.Namespace) -> int:
    from watchkeep.pki import KeyType, SitePKI

    passphrase = read_secret_file(args.passphrase_file, "passphrase")
    pki = SitePKI(home_of(args), passphrase=passphrase)
    pki.init_ca(args.name, key_type=KeyType.parse(args.key_type), days=args.days)
    return _describe(pki, args.json)


def _show(args: argparse.Namespace) -> int:
    from watchkeep.pki import SitePKI

    return _describe(SitePKI(home_of(args)), args.json)


def _describe(pki: Any, as_json: bool) -> int:
    info = pki.describe_ca()
    if as_json:
        emit_json(info)
    else:
        print_table(
            ["field", "value"],
            [
                ["subject", info["subject"]],
                ["sha256 fingerprint", info["sha256_fingerprint"]],
                ["key type", info["key_type"]],
                ["not before", info["not_before"]],
                ["not after", f"{info['not_after']} ({info['days_left']:.0f} days left)"],
                ["certificate", info["cert_path"]],
                ["CRL", info["crl_path"]],
            ],
        )
    return 0


def _crl(args: argparse.Namespace) -> int:
    from cryptography import x509

    from watchkeep.pki import SitePKI

    pki = SitePKI(home_of(args), passphrase=ca_passphrase(args))
    path = pki.write_crl(out=args.out)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    info: dict[str, Any] = {
        "path": str(path.resolve()),
        "revoked": [format(r.serial_number, "x") for r in crl],
        "last_update": crl.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "next_update": crl.next_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        if crl.next_update_utc
        else None,
    }
    if args.json:
        emit_json(info)
    else:
        print(
            f"CRL written to {info['path']}: {len(info['revoked'])} revoked, "
            f"next update {info['next_update']}"
        )
    return 0
