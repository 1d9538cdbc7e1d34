"""`watchkeep cert ...`: issue, sign, list, show, renew, revoke and export server certificates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from watchkeep.cli._ca import add_ca_passphrase, ca_passphrase
from watchkeep.cli._common import add_json, emit_json, home_of, print_table, read_secret_file

__all__ = ["register"]


def register(groups: Any) -> None:
    from watchkeep.pki import Role

    roles = ", ".join(role.value for role in Role)
    cert = groups.add_parser("cert", help="server certificates")
    sub = cert.add_subparsers(dest="command", metavar="COMMAND", required=True)

    issue = sub.add_parser("issue", help="issue a server certificate with a new key")
    issue.add_argument("--role", required=True, help=roles)
    issue.add_argument("--host", action="append", required=True, help="host name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="IP address SAN (repeatable)")
    issue.add_argument("--days", type=int, default=None, help="validity in days (default 90)")
    issue.add_argument("--key-type", default="rsa-2048", help="rsa-2048, rsa-3072 or ecdsa-p256")
    issue.add_argument("--owner", help="service account that will own the key (needs root)")
    issue.add_argument("--out", type=Path, help="directory for the files (default HOME/certs)")
    issue.add_argument(
        "--replace", action="store_true", help="supersede an active certificate for the same host"
    )
    add_ca_passphrase(issue)
    add_json(issue)
    issue.set_defaults(handler=_issue)

    sign = sub.add_parser("sign-csr", help="sign a server's CSR (its key stays on the server)")
    sign.add_argument("csr", type=Path, metavar="CSR")
    sign.add_argument("--role", required=True, help=roles)
    sign.add_argument("--days", type=int, default=None)
    sign.add_argument("--out", type=Path, help="certificate file (chain goes beside it)")
    sign.add_argument("--replace", action="store_true")
    add_ca_passphrase(sign)
    add_json(sign)
    sign.set_defaults(handler=_sign_csr)

    listing = sub.add_parser("list", help="the certificates in the inventory")
    listing.add_argument("--expiring-within", metavar="DURATION", help="e.g. 30d")
    listing.add_argument("--all", action="store_true", help="include superseded and revoked")
    add_json(listing)
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="one certificate, by name or serial")
    show.add_argument("name", metavar="NAME")
    add_json(show)
    show.set_defaults(handler=_show)

    renew = sub.add_parser("renew", help="re-issue with a new key, same names and place")
    target = renew.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", metavar="NAME")
    target.add_argument("--all", action="store_true", help="every active certificate")
    renew.add_argument("--within", metavar="DURATION", help="only those expiring within, e.g. 30d")
    renew.add_argument("--days", type=int, default=None)
    add_ca_passphrase(renew)
    add_json(renew)
    renew.set_defaults(handler=_renew)

    revoke = sub.add_parser("revoke", help="revoke a certificate and publish a new CRL")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--reason", default="unspecified")
    add_ca_passphrase(revoke)
    add_json(revoke)
    revoke.set_defaults(handler=_revoke)

    export = sub.add_parser("export", help="export certificate, key and CA as PKCS#12")
    export.add_argument("name", metavar="NAME")
    export.add_argument("--pkcs12", type=Path, required=True, metavar="FILE")
    export.add_argument("--password-file", type=Path)
    add_json(export)
    export.set_defaults(handler=_export)


def _pki(args: argparse.Namespace, *, signing: bool) -> Any:
    from watchkeep.pki import SitePKI

    return SitePKI(home_of(args), passphrase=ca_passphrase(args) if signing else None)


def _report(records: list[Any], as_json: bool, *, single: bool = False) -> int:
    from watchkeep._clock import utcnow_to_second
    from watchkeep.pki import record_to_json

    now = utcnow_to_second()
    data = [record_to_json(r, now) for r in records]
    if as_json:
        emit_json(data[0] if single else data)
        return 0
    print_table(
        ["name", "status", "hosts", "serial", "not after", "days left"],
        [
            [
                d["name"],
                d["status"],
                ",".join(d["hosts"] + d["ips"]),
                d["serial"][:16],
                d["not_after"],
                f"{d['days_left']:.0f}",
            ]
            for d in data
        ],
    )
    if single:
        d = data[0]
        print(f"sha256 fingerprint: {d['sha256_fingerprint']}")
        print(f"certificate: {d['cert_path']}\nchain: {d['chain_path']}\nkey: {d['key_path']}")
    return 0


def _days(args: argparse.Namespace) -> int:
    from watchkeep.pki import DEFAULT_SERVER_DAYS

    return int(args.days) if args.days is not None else DEFAULT_SERVER_DAYS


def _issue(args: argparse.Namespace) -> int:
    from watchkeep.pki import KeyType, Role

    role, key_type = Role.parse(args.role), KeyType.parse(args.key_type)
    record = _pki(args, signing=True).issue(
        role,
        args.host,
        ips=args.ip,
        days=_days(args),
        key_type=key_type,
        owner=args.owner,
        out=args.out,
        replace=args.replace,
    )
    return _report([record], args.json, single=True)


def _sign_csr(args: argparse.Namespace) -> int:
    from watchkeep.pki import Role

    role = Role.parse(args.role)
    record = _pki(args, signing=True).sign_csr(
        args.csr, role, days=_days(args), out=args.out, replace=args.replace
    )
    return _report([record], args.json, single=True)


def _list(args: argparse.Namespace) -> int:
    from watchkeep._names import parse_duration

    within = parse_duration(args.expiring_within) if args.expiring_within else None
    records = _pki(args, signing=False).certificates(
        include_history=args.all, expiring_within=within
    )
    return _report(records, args.json)


def _show(args: argparse.Namespace) -> int:
    return _report([_pki(args, signing=False).find(args.name)], args.json, single=True)


def _renew(args: argparse.Namespace) -> int:
    from watchkeep._names import parse_duration
    from watchkeep.errors import UsageError

    pki = _pki(args, signing=True)
    if args.all:
        within = parse_duration(args.within) if args.within else None
        targets = [r.name for r in pki.certificates(expiring_within=within) if r.key_path]
    else:
        if args.within:
            raise UsageError("--within applies to --all only", fix="drop --within or use --all")
        targets = [args.name]
    renewed = [pki.renew(name, days=args.days) for name in targets]
    return _report(renewed, args.json, single=not args.all)


def _revoke(args: argparse.Namespace) -> int:
    from watchkeep.cli._trust import publish_crl

    pki = _pki(args, signing=True)
    record = pki.revoke(args.name, reason=args.reason)
    _report([record], args.json, single=True)
    # The servers fetch the new CRL from the management server; the stores filled from
    # this home by hand get it now, or `openssl verify -CApath` would still say OK.
    publish_crl(pki.home, (lambda _text: None) if args.json else print)
    return 0


def _export(args: argparse.Namespace) -> int:
    password = read_secret_file(args.password_file, "PKCS#12 password")
    record = _pki(args, signing=False).export_pkcs12(args.name, args.pkcs12, password=password)
    if args.json:
        emit_json({"name": record.name, "pkcs12_path": str(args.pkcs12.resolve())})
    else:
        print(f"{record.name} exported to {args.pkcs12}")
    return 0
