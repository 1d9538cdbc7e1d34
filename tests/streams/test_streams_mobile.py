"""The mobile server (and the management server) as clients of the recording servers:
a recording server whose certificate fails verification is refused, and the answer says
which server and why.

Given a site of its own (this module puts another server at rs1's address): a management
server, rs1 recording cam1 with its encryption on, mobile1 trusting the site CA and
mobile2 whose trust store lacks it. The management server stays in plaintext, so that
mobile2, which cannot verify anyone, still registers and learns the site.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from stream_support import (
    add_camera,
    assert_frame_from,
    build_site,
    management_signer,
    read_parts,
    read_problem,
    request,
)

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

pytestmark = pytest.mark.slow

LIVE = "/api/v1/cameras/cam1/live.mjpeg"


@pytest.fixture(scope="module")
def site(site_factory: Callable[[str], LocalSite]) -> LocalSite:
    site = site_factory("mobile")
    build_site(
        site,
        [
            ("ms", ServerRole.MANAGEMENT),
            ("rs1", ServerRole.RECORDING),
            ("mobile1", ServerRole.MOBILE),
            ("mobile2", ServerRole.MOBILE),
        ],
        mobile2={"trust": False},
    )
    add_camera(site, "cam1", "rs1")
    site.encrypt("rs1")
    return site


def test_the_mobile_server_relays_a_recording_server_it_verifies(site: LocalSite) -> None:
    # When a client asks mobile1, which trusts the site CA, for cam1
    token = site.login_token(via="mobile1")
    with request(site.servers["mobile1"], "http", LIVE, ca=None, token=token) as r:
        part = read_parts(r, 1)[0]
    # Then it relays rs1's encrypted stream
    assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)


def test_a_mobile_server_without_the_site_ca_refuses_the_recording_server(
    site: LocalSite,
) -> None:
    # When a client asks mobile2, whose trust store lacks the site CA, for cam1
    token = site.login_token(via="mobile2")
    with request(site.servers["mobile2"], "http", LIVE, ca=None, token=token) as r:
        # Then mobile2 answers 502 with a problem document naming rs1 and the cause
        problem = read_problem(r, 502)
    assert problem["server"] == "rs1", problem
    assert "cannot connect to rs1 " in problem["detail"], problem
    assert "[trust.installed]" in problem["detail"], problem
    trust_dir = site.servers["mobile2"].trust_dir
    assert problem["fix"] == f"watchkeep trust install --store {trust_dir}", problem
    assert "mobile2: camera cam1: cannot connect to rs1" in site.log_text("mobile2")


def test_a_recording_server_answering_with_another_host_certificate_is_refused(
    site: LocalSite, ca_file: Path
) -> None:
    # Given rs1 dead, and rs9 (a recording server of the site, with a valid certificate for
    # its own name, rs9.site.test) now at rs1's address and ports, encrypted
    rs1 = site.servers["rs1"]
    site.kill("rs1")
    rs9 = site.add_server("rs9", ServerRole.RECORDING, certificate=False)
    rs9.address = rs1.address
    site.issue(rs9)
    site.write_config(rs9)
    site.start("rs9")
    site.wait_online("rs9")
    site.encrypt("rs9")

    # When a client asks mobile1 for cam1, which the site still puts on rs1
    token = site.login_token(via="mobile1")
    with request(site.servers["mobile1"], "http", LIVE, ca=None, token=token) as r:
        # Then mobile1 refuses rs9's certificate for rs1's name: 502, naming rs1 and the
        # rule, and the names the certificate holds
        problem = read_problem(r, 502)
    assert problem["server"] == "rs1", problem
    assert "[cert.hostname]" in problem["detail"], problem
    assert f"not valid for {rs1.host}" in problem["detail"], problem
    assert rs9.host in problem["detail"], problem

    # And the management server, fetching cam1's snapshot, refuses it the same way
    path = "/api/v1/cameras/cam1/snapshot.jpg"
    with request(site.management, "api", path, ca=None, token=token) as r:
        problem = read_problem(r, 502)
    assert problem["server"] == "rs1", problem
    assert "[cert.hostname]" in problem["detail"], problem

    # And rs9 itself serves what a client asks of rs9 with a token for rs9 (the refusal
    # is of the name, not of the certificate)
    token = management_signer(site).issue("admin", "stream", "rs9", 60, cameras=[], sid="s")
    with request(rs9, "data", "/api/v1/status", ca=ca_file, token=token) as r:
        assert r.status == 200, r.read()


@pytest.fixture
def ca_file(site: LocalSite) -> Path:
    return site.home.ca_cert


def test_a_mobile_server_with_an_old_site_map_goes_up_to_tls(
    site_factory: Callable[[str], LocalSite],
) -> None:
    # Given mobile3, which learnt the site (rs1 in plaintext) at its registration and will
    # not hear of it again for an hour, and rs1 encrypted after that (where a camera is,
    # and whether it is encrypted, the mobile server asks the management server at each
    # stream; a port found speaking TLS meanwhile is followed up, never down)
    site = site_factory("stale")
    build_site(site, [("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING)])
    add_camera(site, "cam1", "rs1")
    mobile3 = site.add_server("mobile3", ServerRole.MOBILE)
    site.write_config(mobile3)
    text = mobile3.config.read_text()
    mobile3.config.write_text(
        text.replace(f"heartbeat_interval = {site.heartbeat_interval}", "heartbeat_interval = 3600")
    )
    site.start("mobile3")
    site.wait_online("mobile3")
    site.encrypt("rs1")

    # When a client asks mobile3 for cam1
    with request(mobile3, "http", LIVE, ca=None, token=site.login_token(via="mobile3")) as r:
        part = read_parts(r, 1)[0]
    # Then mobile3 found rs1's port speaking TLS and relayed its verified stream
    assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)
    assert "recording server refused" not in site.log_text("mobile3")
