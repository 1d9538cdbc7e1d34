"""The rules a running site breaks now (watchkeep.site.site_breaches, the management
client's banner): pure, over site models made here."""

from __future__ import annotations

import datetime as dt

from watchkeep.site import CertificateStatus, Readiness, Server, ServerRole, site_breaches

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
CA = "ca-fingerprint"


def server(
    name: str,
    role: ServerRole,
    *,
    encryption: bool = True,
    days_left: float = 60,
    trusted: tuple[str, ...] = (CA,),
    online: bool = True,
) -> Server:
    certificate = CertificateStatus(
        sha256_fingerprint="f" * 64,
        serial=f"{name}-serial",
        not_after=NOW + dt.timedelta(days=days_left),
        hosts=(f"{name}.site.test",),
    )
    return Server(
        name=name,
        role=role,
        host=f"{name}.site.test",
        address="127.0.0.1",
        ports={},
        encryption=encryption,
        online=online,
        readiness=Readiness(certificate, trusted),
    )


def breaches(*servers: Server) -> list[tuple[str, str]]:
    found = site_breaches(servers, ca_fingerprint=CA, now=NOW, warn_days=(30, 14, 7))
    return [(b.server, b.code) for b in found]


def test_a_site_that_keeps_every_rule_breaks_none() -> None:
    assert breaches(server("ms", ServerRole.MANAGEMENT), server("rs1", ServerRole.RECORDING)) == []


def test_the_management_server_encrypted_while_a_recorder_is_not() -> None:
    found = breaches(
        server("ms", ServerRole.MANAGEMENT),
        server("rs1", ServerRole.RECORDING, encryption=False),
        server("fo1", ServerRole.FAILOVER, encryption=False),
    )
    assert found == [("rs1", "site.ms_requires_all_rs"), ("fo1", "site.ms_requires_all_rs")]
    # and nothing while the management server is plaintext too
    assert (
        breaches(
            server("ms", ServerRole.MANAGEMENT, encryption=False),
            server("rs1", ServerRole.RECORDING, encryption=False),
        )
        == []
    )


def test_a_failover_server_not_prepared_for_an_encrypted_recorder() -> None:
    unprepared = server("fo1", ServerRole.FAILOVER, trusted=())
    assert breaches(
        server("ms", ServerRole.MANAGEMENT), server("rs1", ServerRole.RECORDING), unprepared
    ) == [("fo1", "site.failover_prepared")]
    offline = server("fo1", ServerRole.FAILOVER, online=False)
    assert ("fo1", "site.failover_prepared") in breaches(
        server("rs1", ServerRole.RECORDING), offline
    )
    # no encrypted recording server: nothing a failover server would have to take over
    assert breaches(server("rs1", ServerRole.RECORDING, encryption=False), unprepared) == []


def test_certificates_inside_the_first_warning_or_expired() -> None:
    found = site_breaches(
        [
            server("ms", ServerRole.MANAGEMENT, days_left=31),
            server("rs1", ServerRole.RECORDING, days_left=29.6),
            server("rs2", ServerRole.RECORDING, days_left=-1),
        ],
        ca_fingerprint=CA,
        now=NOW,
        warn_days=(30, 14, 7),
    )
    assert [(b.server, b.code) for b in found] == [
        ("rs1", "cert.expiry_warning"),
        ("rs2", "cert.validity"),
    ]
    assert "expires in 30 day(s)" in found[0].message
    assert found[0].fix == "watchkeep cert renew recording-rs1.site.test"
