"""Which tokens a revocation refuses (the rules alone; the servers end to end are in
test_token_revocation.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from watchkeep.servers._tokens import InvalidToken, Revocations, Scope, TokenSigner, TokenVerifier

NOW = 1_800_000_000.0


def claims(user: str, issued: float, jti: str = "a1") -> dict[str, object]:
    return {"sub": user, "issued": issued, "iat": int(issued), "jti": jti, "exp": issued + 900}


def test_a_users_cut_refuses_its_earlier_tokens_only() -> None:
    revoked = Revocations().with_user("alice", NOW)
    assert revoked.why(claims("alice", NOW - 0.000001)) is not None
    # a token issued a moment later, in the same second, is good
    assert revoked.why(claims("alice", NOW + 0.000001)) is None
    assert revoked.why(claims("bob", NOW - 60)) is None
    # a token without "issued" (from before it existed) is judged by its iat
    assert revoked.why({"sub": "alice", "iat": int(NOW) - 1, "jti": "x"}) is not None


def test_a_logged_out_session_refuses_that_token_only() -> None:
    revoked = Revocations().with_session(claims("alice", NOW, "s1"), NOW, limit=10)
    assert revoked.why(claims("alice", NOW, "s1")) == "its session was logged out"
    assert revoked.why(claims("alice", NOW, "s2")) is None
    assert revoked.tokens == {"s1": NOW + 900}


def test_past_the_limit_a_log_out_revokes_the_users_every_token() -> None:
    revoked = Revocations()
    for n in range(3):
        revoked = revoked.with_session(claims("mallory", NOW, f"s{n}"), NOW, limit=3)
    assert len(revoked.tokens) == 3
    revoked = revoked.with_session(claims("mallory", NOW + 1, "s3"), NOW + 2, limit=3)
    assert len(revoked.tokens) == 3  # bounded
    assert revoked.users == {"mallory": NOW + 2}
    assert revoked.why(claims("mallory", NOW + 1, "s4")) is not None
    assert revoked.why(claims("alice", NOW + 1, "s5")) is None


def test_what_can_no_longer_refuse_a_token_is_dropped_and_bad_json_is_ignored() -> None:
    revoked = Revocations({"old": NOW - 5000, "new": NOW}, {"gone": NOW - 10, "live": NOW + 10})
    assert revoked.pruned(users_after=NOW - 1000, tokens_after=NOW) == Revocations(
        {"new": NOW}, {"live": NOW + 10}
    )
    assert Revocations.from_json(revoked.as_json()) == revoked
    for bad in (None, [], "x", {"users": [1]}, {"users": {"a": "soon", "b": True}}):
        assert Revocations.from_json(bad) == Revocations()


def test_the_verifier_refuses_revoked_user_and_stream_tokens_and_no_control_token() -> None:
    signer = TokenSigner(ed25519.Ed25519PrivateKey.generate())
    verifier = TokenVerifier.from_b64(signer.public_key_b64())
    user = signer.issue("alice", "user", "ms", 900, role="operator")
    stream = signer.issue("alice", "stream", "rs1", 900, cameras=["cam1"], sid="s1")
    control = signer.issue("alice", "control", "rs1", 60)
    later = NOW * 2  # a cut after all were issued
    revoked = Revocations().with_user("alice", later)
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(user, scope="user", audience="ms", revoked=revoked)
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(stream, scope="stream", audience="rs1", revoked=revoked)
    assert verifier.verify(control, scope="control", audience="rs1", revoked=revoked)["sub"]
    assert verifier.verify(user, scope="user", audience="ms")["sub"] == "alice"


def test_a_logged_out_session_revokes_the_stream_tokens_made_from_it() -> None:
    signer = TokenSigner(ed25519.Ed25519PrivateKey.generate())
    verifier = TokenVerifier.from_b64(signer.public_key_b64())
    user = verifier.verify(signer.issue("alice", "user", "ms", 900), scope="user", audience="ms")
    mine = signer.issue("alice", "stream", "rs1", 900, cameras=["cam1"], sid=user["jti"])
    other = signer.issue("alice", "stream", "rs1", 900, cameras=["cam1"], sid="another")
    revoked = Revocations().with_session(user, NOW, limit=10)
    with pytest.raises(InvalidToken, match="logged out"):
        verifier.verify(mine, scope="stream", audience="rs1", revoked=revoked)
    assert verifier.verify(other, scope="stream", audience="rs1", revoked=revoked)


@pytest.mark.parametrize(
    ("scope", "audience", "why"),
    [
        ("user", "rs1", "not for rs1"),  # a log-in token at a recording server
        ("stream", "ms", "not for ms"),  # a stream token replayed at the management server
        ("stream", "rs2", "not for rs2"),  # ... or at another recording server
        ("control", "rs1", "'stream', not 'control'"),  # a stream token on the control link
    ],
)
def test_a_token_is_refused_by_every_server_it_does_not_name(
    scope: Scope, audience: str, why: str
) -> None:
    signer = TokenSigner(ed25519.Ed25519PrivateKey.generate())
    verifier = TokenVerifier.from_b64(signer.public_key_b64())
    token = signer.issue(
        "alice", "stream" if scope != "user" else "user", "rs1" if scope != "user" else "ms", 60
    )
    with pytest.raises(InvalidToken, match=why):
        verifier.verify(token, scope=scope, audience=audience)


@pytest.mark.parametrize("tail", ["=", "==", "\r\n", "!:", " ", "."])
def test_a_token_has_one_spelling(tail: str) -> None:
    signer = TokenSigner(ed25519.Ed25519PrivateKey.generate())
    verifier = TokenVerifier.from_b64(signer.public_key_b64())
    token = signer.issue("alice", "user", "ms", 60)
    assert verifier.verify(token, scope="user", audience="ms")
    with pytest.raises(InvalidToken, match="malformed"):
        verifier.verify(token + tail.encode().decode("unicode_escape"), scope="user", audience="ms")
    # nor may the unused bits of a part's last character be set
    head, body, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    with pytest.raises(InvalidToken):
        verifier.verify(f"{head}.{body}.{twin}", scope="user", audience="ms")
