"""The client address a mobile server names to the management server: believed only with a
fresh proof made with the site's registration key (the rules alone; the relay end to end is
in test_hostile_input.py)."""

from __future__ import annotations

from watchkeep.servers._forwarded import (
    CLIENT_HEADER,
    MAX_AGE,
    PROOF_HEADER,
    client_headers,
    proven_client,
)

KEY = "site-registration-key"
NOW = 1_800_000_000.0


def test_a_proven_client_is_believed() -> None:
    headers = client_headers("198.51.100.7", KEY, NOW)
    assert proven_client(headers, KEY, NOW) == "198.51.100.7"
    assert proven_client(headers, KEY, NOW + MAX_AGE) == "198.51.100.7"
    assert proven_client(client_headers("2001:db8::7", KEY, NOW), KEY, NOW) == "2001:db8::7"


def test_anything_else_is_not() -> None:
    headers = client_headers("198.51.100.7", KEY, NOW)
    assert proven_client(headers, "another-key", NOW) is None  # another site's key
    assert proven_client(headers, None, NOW) is None  # no key here: no proof possible
    assert proven_client(headers, KEY, NOW + MAX_AGE + 2) is None  # too old
    assert proven_client(headers, KEY, NOW - MAX_AGE - 2) is None  # from the future
    swapped = {**headers, CLIENT_HEADER: "198.51.100.8"}  # the proof is for another address
    assert proven_client(swapped, KEY, NOW) is None
    stamp, _, mac = headers[PROOF_HEADER].partition(":")
    assert proven_client({**headers, PROOF_HEADER: f"{int(stamp) + 1}:{mac}"}, KEY, NOW) is None
    for proof in ("", "garbage", ":", "x:y", f"{stamp}:"):
        assert proven_client({**headers, PROOF_HEADER: proof}, KEY, NOW) is None
    assert proven_client({PROOF_HEADER: headers[PROOF_HEADER]}, KEY, NOW) is None
    not_an_address = client_headers("rs1.site.example", KEY, NOW)
    assert proven_client(not_an_address, KEY, NOW) is None
    assert client_headers("198.51.100.7", None, NOW) == {}
    assert client_headers(None, KEY, NOW) == {}
