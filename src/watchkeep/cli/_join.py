"""`watchkeep join TOKEN`: on a new server's machine, join the site (see
watchkeep.client._join for what it does, in which order)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of

__all__ = ["register"]


def register(groups: Any) -> None:
    join = groups.add_parser(
        "join",
        help="join the site with a token from `watchkeep enroll create` (on the new server's "
        "machine)",
    )
    join.add_argument("token", metavar="TOKEN", help="the token, as printed")
    join.add_argument(
        "--service-account",
        metavar="USER",
        help="the account that will run the server and own its key (default: you)",
    )
    join.add_argument(
        "--key-type",
        default="rsa-2048",
        help="the server's key, made on this machine: rsa-2048, rsa-3072 or ecdsa-p256",
    )
    add_json(join)
    join.set_defaults(handler=_join)


def _join(args: argparse.Namespace) -> int:
    from watchkeep.client._join import join_site
    from watchkeep.pki import KeyType

    key_type = KeyType.parse(args.key_type)  # refused here, before anything is sent
    joined = join_site(args.token, home_of(args), args.service_account, key_type=key_type)
    if not joined.encrypted_link:
        print(
            "watchkeep: warning: the management server speaks plaintext: the join and this "
            "server's management link cross the network in clear (the token's secret did "
            "not, and the certificate was checked against the token's CA); turn encryption on "
            f"(watchkeep encryption enable --server {joined.name} on each server, then the "
            "management server)",
            file=sys.stderr,
        )
    if args.json:
        emit_json(joined.as_json())
        return 0
    print(
        f"joined the site as {joined.role} server {joined.name} ({joined.host}, "
        f"{joined.address}); certificate serial {joined.serial}, valid until {joined.not_after}"
    )
    print(f"  its files: {joined.directory} (key mode 0600, owned by {joined.service_account})")
    print("  start it with:")
    print(f"  {joined.command}")
    return 0
