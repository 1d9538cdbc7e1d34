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
    init.add_argument(
        "--publish-url",
        metavar="URL",
        help="where the management server publishes the CA and its CRL over plain HTTP "
        "(its [ports] publish listener, e.g. http://ms.site.example:9080); issued "
        "certificates then name them (CRL distribution point, AIA caIssuers)",
    )
    add_json(init)
    init.set_defaults(handler=_init)

    show = sub.add_parser("show", help="subject, fingerprint, validity and path of the CA")
    add_json(show)
    show.set_defaults(handler=_show)

    rotate = sub.add_parser("rotate", help="make a new CA; old and new stay trusted side by side")
    rotate.add_argument("--name", help="the new CA's name (default: old name and the month)")
    rotate.add_argument("--key-type", help="default: the old CA's key type")
    rotate.add_argument("--days", type=int, default=3652)
    rotate.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait for each step on a connected site (default 300)",
    )
    add_ca_passphrase(rotate)
    add_json(rotate)
    rotate.set_defaults(handler=_rotate)

    retire = sub.add_parser(
        "retire", help="stop trusting an old CA (after every certificate moved)"
    )
    retire.add_argument("fingerprint", metavar="SHA256_FINGERPRINT", help="or a unique prefix")
    add_ca_passphrase(retire)
    add_json(retire)
    retire.set_defaults(handler=_retire)

    publish = sub.add_parser(
        "publish-url",
        help="set where the CA and its CRL are published; certificates issued or renewed "
        "from now on name it",
    )
    publish.add_argument("url", metavar="URL", help="e.g. http://ms.site.example:9080")
    add_json(publish)
    publish.set_defaults(handler=_publish_url)

    crl = sub.add_parser("crl", help="sign a fresh CRL")
    crl.add_argument("--out", type=Path, help="also write it to this file")
    add_ca_passphrase(crl)
    add_json(crl)
    crl.set_defaults(handler=_crl)


def _init(args: argparse.Namespace) -> int:
    from watchkeep.pki import KeyType, SitePKI

    passphrase = read_secret_file(args.passphrase_file, "passphrase")
    pki = SitePKI(home_of(args), passphrase=passphrase)
    pki.init_ca(
        args.name,
        key_type=KeyType.parse(args.key_type),
        days=args.days,
        publish_url=args.publish_url,
    )
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
                ["published at", info["publish_url"] or "(not published: ca publish-url URL)"],
            ],
        )
    return 0


def _publish_url(args: argparse.Namespace) -> int:
    from watchkeep.pki import SitePKI

    pki = SitePKI(home_of(args))
    pki.set_publish_url(args.url)
    info = pki.describe_ca()
    result = {k: info[k] for k in ("publish_url", "crl_url", "ca_url")}
    if args.json:
        emit_json(result)
    else:
        print(
            f"certificates issued or renewed from now on name the CRL {result['crl_url']} "
            f"and the CA certificate {result['ca_url']} (renew the others: watchkeep cert "
            "renew --all)"
        )
    return 0


def _crl(args: argparse.Namespace) -> int:
    from cryptography import x509

    from watchkeep.cli._trust import publish_crl
    from watchkeep.pki import SitePKI

    pki = SitePKI(home_of(args), passphrase=ca_passphrase(args))
    path = pki.write_crl(out=args.out)
    refreshed = publish_crl(pki.home, lambda _text: None)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    info: dict[str, Any] = {
        "path": str(path.resolve()),
        "revoked": [format(r.serial_number, "x") for r in crl],
        "last_update": crl.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "next_update": crl.next_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        if crl.next_update_utc
        else None,
        "trust_stores_refreshed": refreshed,
    }
    if args.json:
        emit_json(info)
    else:
        print(
            f"CRL written to {info['path']}: {len(info['revoked'])} revoked, "
            f"next update {info['next_update']}"
        )
        for store in refreshed:
            print(f"CRL refreshed in the trust store {store}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    import asyncio

    from watchkeep.pki import KeyType, SitePKI
    from watchkeep.pki._rotation import rotate_ca
    from watchkeep.trust import DirectoryTrustStore

    home = home_of(args)
    pki = SitePKI(home, passphrase=ca_passphrase(args))
    old, new = rotate_ca(
        pki,
        name=args.name,
        key_type=KeyType.parse(args.key_type) if args.key_type else None,
        days=args.days,
    )
    # This home verifies with its own trust store: it trusts the new CA at once.
    store = DirectoryTrustStore(home.trust_dir)
    store.install(new.certificate)
    for crl in _fresh_crls(pki):
        store.install_crl(crl)
    info: dict[str, Any] = {
        "old_ca_sha256_fingerprint": old.fingerprint,
        "new_ca_sha256_fingerprint": new.fingerprint,
        "renewed": [],
    }
    say = (lambda _text: None) if args.json else print
    say(f"new CA {new.name} ({new.fingerprint}); the old CA {old.fingerprint} stays trusted")
    from watchkeep.client import SiteConnection

    if SiteConnection.path(home).exists():
        info["renewed"] = asyncio.run(
            _roll_site(home, pki, old.fingerprint, new.fingerprint, args.wait, say)
        )
        info["next_steps"] = [f"watchkeep ca retire {old.fingerprint[:16]}"]
    else:
        info["next_steps"] = [
            "give every server's trust store both CAs: watchkeep trust install --store DIR",
            "watchkeep cert renew --all  (re-issue every certificate from the new CA)",
            f"watchkeep ca retire {old.fingerprint[:16]}  (once nothing uses the old CA)",
        ]
    if args.json:
        emit_json(info)
    else:
        for step in info["next_steps"]:
            print(f"  next: {step}")
    return 0


async def _roll_site(
    home: Any, pki: Any, old_fp: str, new_fp: str, wait: float, say: Any
) -> list[str]:
    """Wait until every server trusts the new CA, re-issue every certificate of the old CA,
    and wait until every server serves its new certificate."""
    import asyncio
    import time

    from watchkeep.client import SiteClient
    from watchkeep.errors import WatchkeepError

    async def poll(what: str, done: Any) -> None:
        deadline = time.monotonic() + wait
        async with SiteClient(home) as client:
            while True:
                status = await client.status()
                missing = [s["name"] for s in status["servers"] if not done(s)]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise WatchkeepError(
                        f"CA rotation paused: {', '.join(missing)} did not {what} within {wait:.0f} s",
                        fix="check those servers (watchkeep site status), then run "
                        "`watchkeep cert renew --all` and `watchkeep ca retire` by hand",
                    )
                await asyncio.sleep(0.25)

    await poll("trust the new CA", lambda s: new_fp in s.get("trusted_ca_fingerprints", []))
    say("  every server trusts both CAs")
    from watchkeep.pki._rotation import announce_renewals

    # Every server renews its own certificate from the new CA (told so with the trust
    # bundle); what the CA exported for machines watchkeep does not run is re-issued here,
    # into the CA's own directory.
    announce_renewals(pki)
    async with SiteClient(home) as client:
        hosts = {s["host"] for s in (await client.status())["servers"]}
    renewed = [
        pki.renew(r.name).name
        for r in pki.certificates()
        if r.issuer_fingerprint == old_fp and r.key_path and not set(r.hosts) & hosts
    ]
    say(f"  asked every server to renew from the new CA; re-issued {len(renewed)} exported")

    def moved(server: dict[str, Any]) -> bool:
        served = (server.get("certificate") or {}).get("sha256_fingerprint")
        record = next((r for r in pki.certificates() if r.sha256_fingerprint == served), None)
        return record is not None and record.issuer_fingerprint == new_fp

    await poll("renew its certificate from the new CA", moved)
    say("  every server serves a certificate of the new CA")
    async with SiteClient(home) as client:
        servers = (await client.status())["servers"]
    served = {(s.get("certificate") or {}).get("sha256_fingerprint") for s in servers}
    return renewed + [r.name for r in pki.certificates() if r.sha256_fingerprint in served]


def _fresh_crls(pki: Any) -> list[bytes]:
    from watchkeep.pki._rotation import refresh_crls

    return refresh_crls(pki)


def _retire(args: argparse.Namespace) -> int:
    from watchkeep.pki import SitePKI
    from watchkeep.pki._rotation import retire_ca

    pki = SitePKI(home_of(args), passphrase=ca_passphrase(args))
    directory = retire_ca(pki, args.fingerprint)
    if args.json:
        emit_json({"retired": str(directory)})
    else:
        print(
            f"retired the CA in {directory}; trust stores drop it as the management server "
            "hands out the new bundle (or: watchkeep trust remove FINGERPRINT --store DIR)"
        )
    return 0
