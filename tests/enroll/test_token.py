"""Enrollment tokens as text (pure: no server). A token says what it binds and decodes to
exactly that; anything else, however damaged, is refused as one UsageError, never a
traceback; and signed heartbeats verify only for the request that was signed."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from watchkeep.errors import UsageError
from watchkeep.pki import CertificateAuthority, KeyType, LeafRequest, Role, profile_for
from watchkeep.pki._authority import RevokedEntry
from watchkeep.pki._enrollment import (
    EnrollmentToken,
    join_key,
    join_proof_refusal,
    join_request,
)
from watchkeep.servers._signed import SignedRequestRefused, sign_request, verify_signed_request
from watchkeep.site import ServerRole

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)

TOKEN = EnrollmentToken(
    ms_host="ms.site.example",
    ms_addresses=("192.0.2.2", "2001:db8::2"),
    ms_port=9000,
    ms_tls=True,
    ca_fingerprint="ab" * 32,
    name="rs9",
    role=ServerRole.RECORDING,
    host="rs9.site.example",
    ips=("192.0.2.9",),
    expires_at=NOW,
    secret=EnrollmentToken.new_secret(),
)


def test_a_token_decodes_to_what_it_binds() -> None:
    text = TOKEN.encode()
    assert text.startswith("wkjoin1.")
    assert EnrollmentToken.decode(text) == TOKEN
    assert EnrollmentToken.decode(f"  {text}\n") == TOKEN  # as pasted
    # 256 bits of secret, of which the management server keeps the public key it makes
    assert len(base64.urlsafe_b64decode(TOKEN.secret + "=")) == 32
    assert len(join_key(TOKEN.secret)) == 64
    assert join_key(TOKEN.secret) == join_key(TOKEN.secret)
    assert join_key(TOKEN.secret) != join_key(EnrollmentToken.new_secret())


def csr(host: str = "rs9.site.example") -> x509.CertificateSigningRequest:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )


def test_a_join_proves_the_secret_for_its_csr_alone_and_does_not_carry_it() -> None:
    # Given a join request made from the token for a CSR
    asked = csr()
    body = join_request(TOKEN, asked)
    key = join_key(TOKEN.secret)
    # Then it carries the token's key and the binding, never the secret or the token
    assert body["join_key"] == key
    text = json.dumps(body)
    assert TOKEN.secret not in text
    assert TOKEN.encode() not in text
    # ... and its proof verifies for this management server, this name and this CSR only
    proof = body["proof"]
    assert join_proof_refusal(key, proof, TOKEN.ms_host, "rs9", asked) is None
    assert join_proof_refusal(key, proof, TOKEN.ms_host, "rs9", csr()) is not None
    assert join_proof_refusal(key, proof, "ms2.site.example", "rs9", asked) is not None
    assert join_proof_refusal(key, proof, TOKEN.ms_host, "rs8", asked) is not None
    other = join_key(EnrollmentToken.new_secret())
    assert join_proof_refusal(other, proof, TOKEN.ms_host, "rs9", asked) is not None
    for damaged in ("", "not base64!", base64.b64encode(b"x" * 64).decode(), None, 7):
        refusal = join_proof_refusal(key, damaged, TOKEN.ms_host, "rs9", asked)
        assert refusal is not None
        assert "proof" in refusal


@given(st.text(max_size=300))
def test_any_other_text_is_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=r"malformed.*; fix: "):
        EnrollmentToken.decode(text)


@given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=8)))
def test_damaged_claims_are_one_usage_error(claims: dict[str, object]) -> None:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(UsageError, match="malformed"):
        EnrollmentToken.decode("wkjoin1." + body)


def test_a_token_with_a_short_secret_or_no_address_is_refused() -> None:
    for changed in ({"secret": "x" * 10}, {"ms_addresses": ()}):
        claims = json.loads(base64.urlsafe_b64decode(TOKEN.encode()[8:] + "==="))
        if "secret" in changed:
            claims["secret"] = changed["secret"]
        else:
            claims["ms"]["addresses"] = []
        text = "wkjoin1." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
        with pytest.raises(UsageError, match="malformed"):
            EnrollmentToken.decode(text)


def _ca_and_leaf(
    host: str,
) -> tuple[CertificateAuthority, ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca = CertificateAuthority.create("t", key_type=KeyType.ECDSA_P256, days=30, now=NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    request = LeafRequest(profile_for(Role.RECORDING), (host,), (), 30)
    return ca, key, ca.sign_server_certificate(key.public_key(), request, now=NOW)


def test_a_signed_heartbeat_verifies_for_that_request_only() -> None:
    authority, key, leaf = _ca_and_leaf("rs9.site.example")
    ca = authority.certificate
    revoked = authority.sign_crl(
        [RevokedEntry(leaf.serial_number, NOW, x509.ReasonFlags.key_compromise)], now=NOW, number=2
    )
    body = {"role": "recording", "ports": {"data": 7563}, "x": 1.5}
    path = "/api/v1/servers/rs9/heartbeat"
    headers = sign_request(key, leaf, "POST", path, body, NOW)

    def check(**changed: object) -> int:
        arguments: dict[str, object] = {
            "headers": headers, "method": "POST", "path": path, "body": body,
            "host": "rs9.site.example", "cas": [ca], "crls": [], "now": NOW,
            "not_before_millis": 0, **changed,
        }  # fmt: skip
        return verify_signed_request(**arguments)  # type: ignore[arg-type]

    assert check() == int(NOW.timestamp() * 1000)
    refusals = {
        "another body": {"body": {**body, "x": 2}},
        "another path": {"path": "/api/v1/servers/rs1/heartbeat"},
        "another host": {"host": "rs1.site.example"},
        "replayed": {"not_before_millis": int(NOW.timestamp() * 1000)},
        "too old": {"now": NOW + dt.timedelta(minutes=10)},
        "another CA": {"cas": [_ca_and_leaf("x.site.example")[0].certificate]},
        "revoked": {"crls": [revoked]},
        "no signature": {"headers": {}},
    }
    for changed in refusals.values():
        with pytest.raises(SignedRequestRefused):
            check(**changed)
    # a certificate not made for this key: its signature does not verify
    _, other_key, _ = _ca_and_leaf("rs9.site.example")
    forged = sign_request(other_key, leaf, "POST", path, body, NOW)
    with pytest.raises(SignedRequestRefused, match="signature"):
        check(headers=forged)
