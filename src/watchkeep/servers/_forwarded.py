"""The client address behind the mobile server, as the management server may believe it.

Log-ins relayed by a mobile server reach the management server from the mobile server's
address, so a per-address log-in limit keyed on the TCP peer would shut every mobile user
out as soon as one of them guessed. The mobile server therefore names the address of the
client it relays, and proves it speaks for the site with an HMAC keyed with the site's
registration key (the secret every server of the site holds): any other caller's claim,
or one older than ``MAX_AGE`` seconds, is ignored and the peer address counts. Without a
registration key there is no proof, and the peer address counts too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

__all__ = ["CLIENT_HEADER", "PROOF_HEADER", "client_headers", "proven_client"]

CLIENT_HEADER = "X-Watchkeep-Client"
PROOF_HEADER = "X-Watchkeep-Client-Proof"
MAX_AGE = 60.0  # seconds a proof is good for, either way (clocks of one site agree)


def _mac(key: str, client: str, stamp: str) -> str:
    message = f"watchkeep login client|{client}|{stamp}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def client_headers(client: str | None, key: str | None, now: float) -> dict[str, str]:
    """The headers that name ``client`` to the management server (none without a key or
    an address)."""
    if not key or not client:
        return {}
    stamp = f"{now:.0f}"
    return {CLIENT_HEADER: client, PROOF_HEADER: f"{stamp}:{_mac(key, client, stamp)}"}


def proven_client(headers: Mapping[str, str], key: str | None, now: float) -> str | None:
    """The client address the headers name, if their proof holds; otherwise None."""
    client, proof = headers.get(CLIENT_HEADER), headers.get(PROOF_HEADER)
    if not key or not client or not proof:
        return None
    stamp, _, mac = proof.partition(":")
    try:
        ipaddress.ip_address(client)
        fresh = abs(now - int(stamp)) <= MAX_AGE
    except ValueError:
        return None
    if fresh and hmac.compare_digest(mac, _mac(key, client, stamp)):
        return client
    return None
