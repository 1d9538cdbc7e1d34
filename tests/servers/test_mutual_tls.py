"""Mutual TLS on the management link: the management server's heartbeat endpoint and the
recording servers' control port let in only the right certificate, and say why not.

Given the encrypted site (rs1, fo1 and ms encrypted). The tests drive the heartbeat
endpoint (POST /api/v1/servers/{name}/heartbeat) themselves, as a recording server would,
through the client library, so that every refusal is seen as a peer sees it.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from site_support import (
    call,
    control_token,
    endpoint,
    heartbeat_body,
    identity_of,
    raw_response,
    trust_of,
)

from watchkeep.client import ApiError
from watchkeep.errors import ConnectionFailed, PlaintextToTlsPort
from watchkeep.pki import Role
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite, eventually, servers_by_name
from watchkeep.tls import ServerIdentity, client_context


def heartbeat(
    site: LocalSite,
    name: str,
    body: dict[str, Any],
    *,
    identity: ServerIdentity | None,
    tls: bool = True,
) -> Any:
    ms = site.management
    context = (
        client_context(trust_of(site.servers["rs1"].trust_dir), identity=identity) if tls else None
    )
    return call(
        endpoint(ms, "api", tls=tls),
        "POST",
        f"/api/v1/servers/{name}/heartbeat",
        ssl_context=context,
        body=body,
    )


def ready_body(site: LocalSite, server: LocalServer, **kwargs: Any) -> dict[str, Any]:
    """The heartbeat rs1 itself would send: ready, with the readiness it reports."""
    body = heartbeat_body(server, site, **kwargs)
    reported = servers_by_name(site.status())[server.name]
    body["readiness"] = {
        "certificate": reported["certificate"],
        "trusted_ca_fingerprints": [site.pki.describe_ca()["sha256_fingerprint"]],
        "problems": [],
    }
    return body


def test_the_heartbeat_of_a_real_recording_server_is_accepted(encrypted: LocalSite) -> None:
    # The twin of the refusals below: rs1's own certificate, key and registration key
    rs1 = encrypted.servers["rs1"]
    config = heartbeat(encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(rs1))
    assert config["ms_encryption"] is True
    assert config["encryption"] is True


def test_a_heartbeat_that_has_the_configuration_gets_only_its_digest_back(
    encrypted: LocalSite,
) -> None:
    # Given the configuration rs1 gets in full, with its digest
    rs1 = encrypted.servers["rs1"]
    body = ready_body(encrypted, rs1)
    full = heartbeat(encrypted, "rs1", body, identity=identity_of(rs1))
    digest = full["config_digest"]
    assert re.fullmatch("[0-9a-f]{64}", digest), digest
    assert {"cameras", "site", "trust", "token_public_key"} <= full.keys()

    # When rs1 sends that digest back, then the answer is the digest alone (and the
    # management link's setting, which a server must always hear)
    same = heartbeat(encrypted, "rs1", {**body, "config_digest": digest}, identity=identity_of(rs1))
    assert same == {"unchanged": True, "config_digest": digest, "ms_encryption": True}

    # And a server with any other digest (older, or none after a restart) gets it all
    stale = heartbeat(
        encrypted, "rs1", {**body, "config_digest": "0" * 64}, identity=identity_of(rs1)
    )
    assert "unchanged" not in stale
    assert stale["cameras"] == full["cameras"]
    assert re.fullmatch("[0-9a-f]{64}", stale["config_digest"])


def test_a_recording_server_is_told_the_management_servers_and_not_the_rest_of_the_site(
    encrypted: LocalSite,
) -> None:
    # Given what fo1 is told, in full
    fo1, rs1 = encrypted.servers["fo1"], encrypted.servers["rs1"]
    body = ready_body(encrypted, fo1)
    before = heartbeat(encrypted, "fo1", body, identity=identity_of(fo1))
    # Then it names the management server alone of the site's servers, and no camera
    assert set(before["site"]) == {encrypted.management.name}
    assert "site_cameras" not in before

    # When a camera is added to rs1, which rs1 is told
    added = encrypted.api(
        "POST",
        "/api/v1/cameras",
        {"name": "elsewhere", "recording_server": "rs1",
         "source": {"kind": "synthetic", "width": 160, "height": 90, "fps": 1.0}},
    )  # fmt: skip
    try:
        told_rs1 = heartbeat(
            encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(rs1)
        )
        assert "elsewhere" in [c["name"] for c in told_rs1["cameras"]]
        # Then what fo1 is told is the same: the same digest, even to a server that sends
        # none (after a restart)
        again = heartbeat(
            encrypted, "fo1", {**body, "config_digest": "0" * 64}, identity=identity_of(fo1)
        )
        assert again["config_digest"] == before["config_digest"]
    finally:
        encrypted.api("DELETE", f"/api/v1/cameras/{added['name']}")


def test_rs1_runs_the_configuration_whose_digest_the_management_server_hands_out(
    encrypted: LocalSite,
) -> None:
    rs1, ms = encrypted.servers["rs1"], encrypted.management

    def digests() -> tuple[str, str]:
        """(what the MS hands rs1 now, what rs1 says it runs)"""
        handed = heartbeat(encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(rs1))[
            "config_digest"
        ]
        running = call(
            endpoint(rs1, "control", tls=True),
            "GET",
            "/control/v1/status",
            ssl_context=client_context(trust_of(ms.trust_dir), identity=identity_of(ms)),
            token=control_token(encrypted),
        )["config_digest"]
        return handed, running

    def in_step() -> str:
        handed, running = digests()
        assert handed == running
        return handed

    before = eventually(in_step, what="rs1 running the configuration the MS hands out")
    # When a camera is added to rs1, then a new configuration (a new digest) reaches it
    encrypted.api(
        "POST",
        "/api/v1/cameras",
        {"name": "digest-cam", "recording_server": "rs1", "source": {"kind": "synthetic"}},
    )
    try:
        after = eventually(in_step, what="rs1 running the configuration with digest-cam")
        assert after != before
    finally:
        encrypted.api("DELETE", "/api/v1/cameras/digest-cam")


def test_a_configuration_older_than_the_one_taken_is_ignored(encrypted: LocalSite) -> None:
    rs1, ms = encrypted.servers["rs1"], encrypted.management
    context = client_context(trust_of(ms.trust_dir), identity=identity_of(ms))

    def rs1_status() -> dict[str, Any]:
        status: dict[str, Any] = call(endpoint(rs1, "control", tls=True), "GET",
                                      "/control/v1/status", ssl_context=context,
                                      token=control_token(encrypted))  # fmt: skip
        return status

    # Given the configuration rs1 was told, and then a newer one with a camera added
    older = heartbeat(encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(rs1))
    encrypted.api("POST", "/api/v1/cameras", {"name": "late-cam", "recording_server": "rs1",
                                              "source": {"kind": "synthetic"}})  # fmt: skip
    try:
        newer = heartbeat(encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(rs1))
        assert newer["config_order"][0] == older["config_order"][0]  # one process
        assert newer["config_order"][1] > older["config_order"][1]
        eventually(
            lambda: "late-cam" in [c["name"] for c in rs1_status()["cameras"]],
            what="rs1 recording late-cam",
        )
        taken = rs1_status()["config_digest"]
        # When the older one reaches rs1 afterwards (a push that timed out, say)
        late = call(endpoint(rs1, "control", tls=True), "POST", "/control/v1/config",
                    ssl_context=context, body=older,
                    token=control_token(encrypted, config=older))  # fmt: skip
        # Then rs1 keeps what it runs: the camera goes on, the digest is the newer one's
        assert "late-cam" in [c["name"] for c in late["cameras"]]
        assert rs1_status()["config_digest"] == taken
    finally:
        encrypted.api("DELETE", "/api/v1/cameras/late-cam")


def test_a_recording_server_without_a_client_certificate_is_refused(
    encrypted: LocalSite,
) -> None:
    rs1 = encrypted.servers["rs1"]

    # When rs1's heartbeat arrives over TLS without a client certificate
    status, content_type, document = raw_response(
        endpoint(encrypted.management, "api", tls=True),
        "POST",
        "/api/v1/servers/rs1/heartbeat",
        ssl_context=client_context(trust_of(rs1.trust_dir)),
        body=ready_body(encrypted, rs1),
    )

    # Then it is refused with a problem document naming the rule, the server and the fix
    assert status == 401
    assert content_type == "application/problem+json"
    assert document["code"] == "cert.chain"
    assert document["server"] == "rs1"
    assert document["fix"]
    assert "mutual TLS" in document["detail"]


def test_a_recording_server_presenting_another_servers_certificate_is_refused(
    encrypted: LocalSite,
) -> None:
    # Given fo1's certificate and key, used by someone who claims to be rs1
    rs1, fo1 = encrypted.servers["rs1"], encrypted.servers["fo1"]

    # When the heartbeat claims rs1's name and host
    with pytest.raises(ApiError) as refused:
        heartbeat(encrypted, "rs1", ready_body(encrypted, rs1), identity=identity_of(fo1))

    # Then it is refused: the certificate does not name rs1's host
    assert refused.value.status == 403
    assert refused.value.code == "cert.hostname"
    assert refused.value.document["server"] == "rs1"
    assert fo1.host in refused.value.document["detail"]


def test_a_recording_server_with_an_expired_certificate_is_refused_in_the_handshake(
    encrypted: LocalSite, tmp_path: Path
) -> None:
    # Given a recording server certificate of the site CA that expired 99 days ago
    long_ago = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=100)
    record = encrypted.pki.issue(
        Role.RECORDING,
        ["expired-rs.site.test"],
        days=1,
        now=long_ago,
        key_type=encrypted.key_type,
        out=tmp_path,
    )
    expired = ServerIdentity(
        "expired-rs",
        "expired-rs.site.test",
        Path(record.chain_path),
        Path(str(record.key_path)),
        needs_client_auth=True,
    )
    rs1 = encrypted.servers["rs1"]
    body = heartbeat_body(rs1, encrypted) | {"host": "expired-rs.site.test"}

    # When it presents that certificate to the management server
    with pytest.raises(ConnectionFailed) as refused:
        heartbeat(encrypted, "expired-rs", body, identity=expired)

    # Then the connection is refused, told as a watchkeep error that says why (not a bare
    # ssl error, nor a mere "server disconnected")
    assert type(refused.value) is not ConnectionFailed
    assert "ms.site.test" in str(refused.value)
    assert "client certificate" in str(refused.value)
    assert "expired-rs" not in servers_by_name(encrypted.status())


def test_plaintext_to_the_encrypted_management_server_is_told_as_such(
    encrypted: LocalSite,
) -> None:
    rs1 = encrypted.servers["rs1"]

    # When a heartbeat arrives in plaintext
    with pytest.raises(PlaintextToTlsPort) as refused:
        heartbeat(encrypted, "rs1", heartbeat_body(rs1, encrypted), identity=None, tls=False)

    # Then the client is told that the port speaks TLS
    assert "TLS" in str(refused.value)
    assert "ms" in str(refused.value)


def test_a_wrong_registration_key_is_refused(encrypted: LocalSite) -> None:
    rs1 = encrypted.servers["rs1"]
    body = ready_body(encrypted, rs1, registration_key="not-the-site-key")

    # When rs1's own certificate comes with a wrong registration key
    with pytest.raises(ApiError) as refused:
        heartbeat(encrypted, "rs1", body, identity=identity_of(rs1))

    # Then the registration is refused
    assert refused.value.status == 401
    assert refused.value.code == "auth.registration"
    assert refused.value.document["server"] == "rs1"


def test_a_recording_server_not_ready_for_encryption_is_refused_registration(
    encrypted: LocalSite,
) -> None:
    # Given a new recording server with no certificate, started on the encrypted site
    encrypted.add_server("rs9", ServerRole.RECORDING, certificate=False)
    try:
        encrypted.start("rs9")

        # Then its registration is refused by the rule, which its log says on one line
        def refused_in_log() -> list[str]:
            lines = [
                line
                for line in encrypted.log_text("rs9").splitlines()
                if "site.ms_requires_all_rs" in line
            ]
            assert lines, encrypted.log_text("rs9")
            return lines

        lines = eventually(refused_in_log, what="rs9 refused by site.ms_requires_all_rs")
        assert len(lines) == 1, lines
        assert "rs9" in lines[0]
        assert "fix:" in lines[0]
        # and the site does not list it
        assert "rs9" not in servers_by_name(encrypted.status())
    finally:
        encrypted.stop("rs9")


def test_the_control_port_refuses_a_client_without_certificate(encrypted: LocalSite) -> None:
    rs1 = encrypted.servers["rs1"]
    context = client_context(trust_of(encrypted.management.trust_dir))

    # When a TLS client without a certificate calls rs1's control port, token and all
    with pytest.raises(ConnectionFailed) as refused:
        call(
            endpoint(rs1, "control", tls=True),
            "GET",
            "/control/v1/status",
            ssl_context=context,
            token=control_token(encrypted),
        )

    # Then the handshake is refused, and told as such
    assert not isinstance(refused.value, ssl.SSLError)
    assert "rs1" in str(refused.value)


def test_the_control_port_refuses_another_servers_certificate(encrypted: LocalSite) -> None:
    rs1, fo1 = encrypted.servers["rs1"], encrypted.servers["fo1"]
    context = client_context(trust_of(fo1.trust_dir), identity=identity_of(fo1))

    # When fo1's certificate calls rs1's control port with a valid control token
    with pytest.raises(ApiError) as refused:
        call(
            endpoint(rs1, "control", tls=True),
            "GET",
            "/control/v1/status",
            ssl_context=context,
            token=control_token(encrypted),
        )

    # Then only the management server's certificate is let in
    assert refused.value.status == 403
    assert refused.value.code == "cert.hostname"
    assert fo1.host in refused.value.document["detail"]


def test_the_control_port_lets_the_management_server_in(encrypted: LocalSite) -> None:
    # The twin of the two refusals above: the management server's own certificate
    rs1, ms = encrypted.servers["rs1"], encrypted.management
    context = client_context(trust_of(ms.trust_dir), identity=identity_of(ms))
    status = call(
        endpoint(rs1, "control", tls=True),
        "GET",
        "/control/v1/status",
        ssl_context=context,
        token=control_token(encrypted),
    )
    assert status["name"] == "rs1"
    assert status["control_tls"] is True
