"""The management web client in a real browser: headless Chromium (Debian's, through
Playwright; tests/browser_support.py) drives one running site (a management server, a
recording server, an RTSP camera of GStreamer's), reaching it by its host names and
trusting its CA through its own NSS database.

The tests run in order on the one site, as an administrator would: the site plaintext
first, its encryption turned on through the page (the management server refused while
the recording server is plaintext), then certificates, the doctor, a camera, users.
Every page is screenshot into WATCHKEEP_TEST_OUTPUT (default: the test's temporary
directory) and checked by axe-core (tests/webclient/vendor/axe-core) for serious and
critical violations; no page may log a console error or throw. The site and the browser
are fixtures of conftest.py, the helpers are in webclient_support.py.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from webclient_support import (
    BROKEN_CAMERA,
    CAMERA,
    CAMERA_PASSWORD,
    CAMERA_USER,
    OPERATOR,
    OPERATOR_PASSWORD,
    SPARE_HOST,
    WARN_DAYS,
    ExpectedRefusals,
    WebSite,
    admin_page,
    admin_password,
    attacker_page,
    banner_codes,
    https_json,
    https_request,
    local_time,
    log_in,
    off_the_loop,
    open_view,
    raw_request,
    shoot_and_check,
    wait_for_picture,
)

from watchkeep.pki import SitePKI
from watchkeep.pki._rotation import rotate_ca
from watchkeep.testing import eventually

pytestmark = pytest.mark.slow

# -- the flows, in order --------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_policy(web: WebSite) -> None:
    # When the page and its script are fetched
    status, headers, body = raw_request(web, "GET", "/", {})
    # Then the page allows scripts, styles and calls from the server itself only, no frame
    assert status == 200
    assert b'<script type="module" src="/web/app.js">' in body
    policy = headers["Content-Security-Policy"]
    for allowed in ("default-src 'none'", "script-src 'self'", "style-src 'self'"):
        assert allowed in policy, policy
    for loophole in ("unsafe-inline", "unsafe-eval", "*"):
        assert loophole not in policy, policy
    assert "frame-ancestors 'none'" in policy, policy
    rs1 = web.site.servers["rs1"]
    # live video from rs1's data listener, by either scheme (its encryption may change)
    for scheme in ("http", "https"):
        assert f"{scheme}://{rs1.host}:{rs1.ports['data']}" in policy, policy
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    # and no page holds inline code
    for inline in (b"<style", b"style=", b"<script>", b" on"):
        assert inline not in body, inline
    # And over plaintext there is no Strict-Transport-Security (browsers ignore it there)
    assert "Strict-Transport-Security" not in headers
    status, headers, _ = raw_request(web, "GET", "/web/app.js", {})
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    status, _, _ = raw_request(web, "GET", "/web/..%2F_server.py", {})
    assert status == 404


def test_a_request_forged_from_another_origin_changes_nothing(web: WebSite) -> None:
    token = off_the_loop(web.site.login_token)
    body = json.dumps({"name": "forged", "password": "forged-password", "role": "administrator"})
    # Given a state change carrying a valid administrator's token, sent from another origin
    status, _, answer = raw_request(
        web,
        "POST",
        "/api/v1/users",
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Origin": "https://attacker.example",
        },
        body.encode(),
    )
    # Then it is refused before it is looked at
    assert status == 403, answer
    assert json.loads(answer)["code"] == "http.origin"
    # and so is one a browser marks as cross-site without naming its origin
    status, _, answer = raw_request(
        web,
        "POST",
        "/api/v1/users",
        {"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "cross-site"},
        body.encode(),
    )
    assert status == 403, answer
    # And a page of another origin (on the site's own network) cannot do it from a
    # browser either: it holds no token (none is kept where another page could send it),
    # and its Origin alone has the request refused
    page = web.new_page()
    with attacker_page(web.attacker) as url:
        page.goto(url)
        result = page.evaluate(
            """async (url) => { const r = await fetch(url, {method: "POST", mode: "no-cors",
            body: JSON.stringify({name: "forged", password: "forged-password"})});
            return r.type; }""",
            web.url("http") + "api/v1/users",
        )
    assert result == "opaque", result
    page.close()
    # And no user was added
    assert "forged" not in [u["name"] for u in off_the_loop(web.site.api, "GET", "/api/v1/users")]


def test_an_administrator_logs_in_and_sees_every_server(
    web: WebSite, console: ExpectedRefusals
) -> None:
    page = web.new_page()
    page.goto(web.url("http"))
    assert page.text_content("#lock") == "Not encrypted: passwords cross the network in clear"
    shoot_and_check(web, page, "01-login")
    # A wrong password, typed with the keyboard from the field that has the focus, is
    # refused with the reason
    console.statuses.add(401)
    assert page.evaluate("() => document.activeElement.id") == "user"
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    page.keyboard.type("not-the-password")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('login-reason').textContent !== ''")
    assert "wrong password" in (page.text_content("#login-reason") or "")
    # When the administrator logs in with the keyboard alone (the refusal left the user
    # name in place and the focus on the password)
    assert page.evaluate("() => document.activeElement.id") == "password"
    assert page.input_value("#password") == ""
    page.keyboard.type(admin_password(web))
    page.keyboard.press("Enter")
    page.wait_for_selector("#view[data-ready=true]")
    # Then the view's heading has the focus, and Tab reaches the views from the top
    assert page.evaluate("() => document.activeElement.id") == "view-title"
    page.focus("#nav-site")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "nav-certificates"
    # And the site shows both servers, plaintext, online
    rows = page.locator("#view tr[data-server]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.server)")) == ["ms", "rs1"]
    for name in ("ms", "rs1"):
        row = page.locator(f"#view tr[data-server={name}]")
        assert "online" in row.inner_text()
        assert row.locator("button[role=switch]").get_attribute("aria-checked") == "false"
    assert page.locator("nav a").all_text_contents() == [
        "Site",
        "Certificates",
        "Doctor",
        "Cameras",
        "Users",
    ]
    # And the banner says, in plain words, which certificates are inside their warning
    assert banner_codes(page) == [("ms", "cert.expiry_warning"), ("rs1", "cert.expiry_warning")]
    assert "expires in 90 day(s)" in page.inner_text("#banner")
    # And the token is in no storage a script of another page could read
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    assert page.context.cookies() == []
    shoot_and_check(web, page, "02-site-plaintext")
    page.close()


def test_the_doctor_findings_are_those_of_the_cli(web: WebSite, console: ExpectedRefusals) -> None:
    page = admin_page(web, "http")
    # When the administrator opens the doctor's findings (the site is plaintext now)
    open_view(page, "doctor")
    page.wait_for_selector("#doctor-summary")
    # Then they are the CLI's `doctor --json`, finding by finding, grouped by server
    shown = page.locator("li.finding").evaluate_all(
        """ls => ls.map(l => ({server: l.closest('section').dataset.server,
        code: l.dataset.code, text: l.innerText}))"""
    )
    ran = web.site.cli("doctor", "--json", "--warn-days", str(WARN_DAYS))
    expected = json.loads(ran.stdout)
    assert expected, "the plaintext site has findings (its logins cross in clear)"
    assert sorted((f["server"], f["code"]) for f in shown) == sorted(
        (f["server"], f["code"]) for f in expected
    )
    for finding in expected:
        texts = [
            f["text"]
            for f in shown
            if (f["server"], f["code"]) == (finding["server"], finding["code"])
        ]
        assert any(
            all(finding[part] in text for part in ("message", "requirement", "fix"))
            for text in texts
        ), (finding, texts)
    shoot_and_check(web, page, "02b-doctor")
    # And they are made again on demand
    summary = page.text_content("#doctor-summary")
    page.click("#doctor-run")
    page.wait_for_selector("#view[data-ready=true] #doctor-summary")
    assert page.locator("li.finding").count() == len(expected), summary
    page.close()


def test_the_management_server_is_refused_while_a_recording_server_is_plaintext(
    web: WebSite, console: ExpectedRefusals
) -> None:
    console.statuses.add(409)  # the refusal itself
    page = admin_page(web, "http")
    # When the administrator turns the management server's encryption on (keyboard only)
    page.focus("button[role=switch][data-server=ms]")
    page.keyboard.press("Enter")
    # Then the API's refusal is shown: every server in the way, each with its fix
    page.wait_for_selector("#refusal")
    item = page.locator("#refusal li[data-server=rs1][data-code='site.ms_requires_all_rs']")
    assert "watchkeep encryption enable --server rs1" in item.inner_text()
    assert page.locator("button[role=switch][data-server=ms]").get_attribute("aria-checked") == (
        "false"
    )
    shoot_and_check(web, page, "03-refusal")
    page.close()


def test_the_recording_server_then_the_management_server_are_encrypted(
    web: WebSite, console: ExpectedRefusals
) -> None:
    page = admin_page(web, "http")
    # When the administrator encrypts rs1 first
    page.click("button[role=switch][data-server=rs1]")
    page.wait_for_selector("button[role=switch][data-server=rs1][aria-checked=true]")
    off_the_loop(web.site.wait_encrypted, "rs1")
    # and then the management server
    page.click("button[role=switch][data-server=ms]")
    # Then the page says where the management server answers now
    page.wait_for_selector("#moved a")
    assert page.get_attribute("#moved a", "href") == web.url("https")
    shoot_and_check(web, page, "04-moved")
    page.close()
    off_the_loop(web.site.wait_encrypted, "ms")
    # And over HTTPS, verified against the site CA, it says every answer must stay so
    page = web.new_page()
    response = page.goto(web.url("https"))
    assert response is not None
    assert response.headers["strict-transport-security"] == "max-age=63072000"
    assert page.text_content("#lock") == "Encrypted connection (TLS)"
    log_in(page, "admin", admin_password(web))
    for name in ("ms", "rs1"):
        switch = page.locator(f"button[role=switch][data-server={name}]")
        assert switch.get_attribute("aria-checked") == "true"
    # and the banner names no broken rule but the certificates inside their warning
    assert banner_codes(page) == [("ms", "cert.expiry_warning"), ("rs1", "cert.expiry_warning")]
    shoot_and_check(web, page, "05-site-encrypted")
    page.close()
    # And every TLS listener of the site says so, a recording server's data listener too
    _, headers, _ = https_request(web, "rs1", "data", "GET", "/api/v1/status", {})
    assert headers["Strict-Transport-Security"] == "max-age=63072000"
    assert headers["X-Frame-Options"] == "DENY"


def test_the_certificates_show_a_timeline_and_one_is_revoked(
    web: WebSite, console: ExpectedRefusals
) -> None:
    page = admin_page(web, "https")
    open_view(page, "certificates")
    # The CA's fingerprint, as `ca show --json` gives it
    ca = SitePKI(web.site.home).describe_ca()  # what `ca show --json` prints
    assert page.text_content("#ca-fingerprint") == ca["sha256_fingerprint"]
    # The timeline draws a bar for every active certificate, ending at its expiry
    listed = [{"name": r.name} for r in SitePKI(web.site.home).certificates()]  # `cert list`
    rows = page.locator("#timeline g.row")
    assert sorted(rows.evaluate_all("gs => gs.map(g => g.dataset.name)")) == sorted(
        r["name"] for r in listed
    )
    spare = f"recording-{SPARE_HOST}"
    assert spare in [r["name"] for r in listed]
    shoot_and_check(web, page, "06-certificates")
    # When the administrator revokes the spare certificate, giving a reason and confirming
    page.click(f"button[data-revoke='{spare}']")
    page.select_option("#revoke-reason", "key-compromise")
    shoot_and_check(web, page, "07-revoke-dialog")
    page.click("#revoke-confirm")
    page.wait_for_selector(f"tr[data-name='{spare}'][data-status=revoked]")
    # Then the CA's inventory says so (the CLI reads it), with the reason
    shown = json.loads(web.site.cli("cert", "show", spare, "--json", check=True).stdout)
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "key-compromise")
    # and the CRL lists its serial (openssl reads it)
    crl = web.site.home.crl
    text = subprocess.run(
        ["openssl", "crl", "-in", str(crl), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert shown["serial"].upper().lstrip("0") in text.replace(":", "").upper()
    assert page.locator(f"button[data-revoke='{spare}']").count() == 0
    page.close()


def test_an_rtsp_camera_is_added_and_shown_live(web: WebSite, console: ExpectedRefusals) -> None:
    page = admin_page(web, "https")
    open_view(page, "cameras")
    # When the administrator adds the RTSP camera, with its user and password
    page.fill("#camera-name", CAMERA)
    page.select_option("#camera-kind", "rtsp")
    page.fill("#camera-url", web.camera_url)
    page.fill("#camera-user", CAMERA_USER)
    page.fill("#camera-password", CAMERA_PASSWORD)
    page.select_option("#camera-server", "rs1")
    page.click("#camera-add button[type=submit]")
    # rs1 learns of the camera with the configuration push that follows: a stream asked
    # for before it arrives is a 404, and the page asks again until the picture comes
    console.statuses.add(404)
    # Then it shows live, straight from rs1 over verified TLS
    picture = f"#camera-grid img[data-camera={CAMERA}]"
    # (the first picture waits for the configuration push, rs1's RTSP session with the
    # camera and, should that first session fail, its reconnection back-off)
    wait_for_picture(page, picture, timeout=120_000)
    assert page.locator(picture).get_attribute("data-source") == "live"
    assert page.locator(picture).evaluate("i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
    src = page.locator(picture).get_attribute("src") or ""
    rs1 = web.site.servers["rs1"]
    assert src.startswith(
        f"https://{rs1.host}:{rs1.ports['data']}/api/v1/cameras/{CAMERA}/live.mjpeg?token="
    )
    # And its password is in no page: the form forgot it, the API shows it redacted
    assert CAMERA_PASSWORD not in page.content()
    assert page.input_value("#camera-password") == ""
    shoot_and_check(web, page, "09-cameras")
    # When the camera is opened alone, and the last seconds are played back
    page.click(f"#camera-grid li[data-camera={CAMERA}] figcaption a")
    wait_for_picture(page, f"img.single[data-camera={CAMERA}]")
    # (a range before the camera was added first: the page says nothing was recorded then)
    for field, moment in (
        ("#playback-from", time.time() - 3600),
        ("#playback-to", time.time() - 3590),
    ):
        page.fill(field, local_time(moment))
    page.click("#playback-form button[type=submit]")
    page.wait_for_selector(f"#playback-form p.words:has-text('Nothing of {CAMERA} was recorded')")
    assert page.locator("#playback").is_hidden()

    # (then the minute before the press of Play; the recorder writes a second behind the
    # live picture at most, and the page is asked again as a user would)
    page.click("#back")
    page.click(f"#camera-grid li[data-camera={CAMERA}] figcaption a")
    wait_for_picture(page, f"img.single[data-camera={CAMERA}]")

    def played_back() -> bool:
        page.click("#playback-form button[type=submit]")
        page.wait_for_function(
            "() => { const i = document.getElementById('playback');"
            " return !i.hidden && i.naturalWidth > 0 || document.querySelector('#playback-form p.words'); }"
        )
        assert page.locator("#playback").is_visible(), page.locator("#playback-form").inner_text()
        return True

    eventually(played_back, timeout=30, interval=1, what="the last minute played back")
    assert CAMERA_PASSWORD not in page.content()
    shoot_and_check(web, page, "10-camera-playback")
    page.click("#back")
    page.wait_for_selector("#view[data-view=cameras][data-ready=true]")

    # When a camera is added with a wrong password
    page.fill("#camera-name", BROKEN_CAMERA)
    page.fill("#camera-url", web.camera_url)
    page.fill("#camera-user", CAMERA_USER)
    page.fill("#camera-password", "not-" + CAMERA_PASSWORD)
    page.click("#camera-add button[type=submit]")
    page.wait_for_selector(f"#view[data-ready=true] li[data-camera={BROKEN_CAMERA}]")

    # Then its card says why it sends nothing (as its recording server last reported)
    def problem_shown() -> str:
        open_view(page, "cameras")
        problem = page.locator(f"li[data-camera={BROKEN_CAMERA}] p.problem")
        assert problem.count() == 1
        return problem.inner_text()

    said = eventually(problem_shown, interval=0.5, what=f"the problem of {BROKEN_CAMERA}")
    status = off_the_loop(web.site.api, "GET", "/api/v1/site/status")
    reported = next(c["problem"] for c in status["cameras"] if c["name"] == BROKEN_CAMERA)
    assert said == f"Sends no pictures: {reported}"
    shoot_and_check(web, page, "10b-camera-problem")
    page.close()


def test_an_operator_added_in_the_page_lacks_the_administrators_controls(
    web: WebSite, console: ExpectedRefusals
) -> None:
    admin = admin_page(web, "https")
    open_view(admin, "users")
    # When the administrator adds an operator who may view the camera only
    admin.fill("#new-user-name", OPERATOR)
    admin.fill("#new-user-password", OPERATOR_PASSWORD)
    admin.select_option("#new-user-role", "operator")
    admin.uncheck("#new-user-cameras-all")
    admin.check(f"#new-user-cameras-{CAMERA}")
    admin.click("#user-add button[type=submit]")
    admin.wait_for_selector(f"tr[data-user={OPERATOR}]")
    shoot_and_check(web, admin, "11-users")
    users = {u["name"]: u for u in off_the_loop(web.site.api, "GET", "/api/v1/users")}
    assert (users[OPERATOR]["role"], users[OPERATOR]["cameras"]) == ("operator", [CAMERA])

    # Then the operator's page has the camera view alone, and none of the controls
    operator = web.new_page()
    operator.goto(web.url("https"))
    log_in(operator, OPERATOR, OPERATOR_PASSWORD)
    assert operator.locator("nav a").all_text_contents() == ["Cameras"]
    picture = f"#camera-grid img[data-camera={CAMERA}]"
    wait_for_picture(operator, picture)
    for control in (
        "#camera-add",
        "button[data-remove]",
        "button[role=switch]",
        "select[id^=move-]",
        "#user-add",
    ):
        assert operator.locator(control).count() == 0, control
    assert "rtsp://" not in operator.content()  # not even the redacted source
    # and the API behind the absent views refuses the operator all the same
    token = https_json(
        web, "POST", "/api/v1/login", None, {"user": OPERATOR, "password": OPERATOR_PASSWORD}
    )[1]["token"]
    for path in (
        "/api/v1/certificates",
        "/api/v1/ca/details",
        "/api/v1/doctor",
        "/api/v1/site/breaches",
        "/api/v1/users",
    ):
        status, answer = https_json(web, "GET", path, token)
        assert (status, answer["code"]) == (403, "auth.role"), (path, answer)
    shoot_and_check(web, operator, "12-operator")

    # When the administrator takes the camera away from the operator
    admin.uncheck(f"#cameras-{OPERATOR}-{CAMERA}")
    admin.click(f"tr[data-user={OPERATOR}] button:has-text('Save {OPERATOR}')")
    admin.wait_for_selector(f"#view[data-ready=true] tr[data-user={OPERATOR}]")
    users = {u["name"]: u for u in off_the_loop(web.site.api, "GET", "/api/v1/users")}
    assert users[OPERATOR]["cameras"] == []
    # Then the live stream the operator watched is cut by the recording server (the
    # operator's tokens are revoked there too), and its next step returns it to the log-in
    # form, saying why
    console.statuses.add(401)
    console.network_errors.add("ERR_INCOMPLETE_CHUNKED_ENCODING")
    operator.click("#nav-cameras")
    operator.wait_for_selector("#login-view:not([hidden])")
    assert "revoked" in (operator.text_content("#login-reason") or "")
    assert operator.locator("#camera-grid").count() == 0
    # And logged in again, the operator sees no camera
    log_in(operator, OPERATOR, OPERATOR_PASSWORD)
    assert operator.locator("#camera-grid").count() == 0
    # When the administrator removes the operator, its session ends as well
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.click(f"button[data-remove={OPERATOR}]")
    admin.wait_for_function(f"() => document.querySelector('tr[data-user={OPERATOR}]') === null")
    operator.click("#nav-cameras")
    operator.wait_for_selector("#login-view:not([hidden])")
    assert "revoked" in (operator.text_content("#login-reason") or "")
    assert OPERATOR not in [u["name"] for u in off_the_loop(web.site.api, "GET", "/api/v1/users")]
    admin.close()
    operator.close()


def test_a_camera_is_removed(web: WebSite, console: ExpectedRefusals) -> None:
    page = admin_page(web, "https")
    open_view(page, "cameras")
    # The live stream in the grid ends when the camera goes
    console.network_errors.add("ERR_INCOMPLETE_CHUNKED_ENCODING")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"button[data-remove={CAMERA}]")
    # (the view drawn before the removal is ready too: wait for the camera to leave it)
    page.wait_for_selector(f"#camera-grid li[data-camera={CAMERA}]", state="detached")
    page.wait_for_selector("#view[data-ready=true] #camera-add")
    assert page.locator(f"#camera-grid li[data-camera={CAMERA}]").count() == 0
    assert [c["name"] for c in off_the_loop(web.site.api, "GET", "/api/v1/cameras")] == [
        BROKEN_CAMERA
    ]
    page.close()


def test_a_ca_rotation_shows_its_progress(web: WebSite, console: ExpectedRefusals) -> None:
    # Given a CA rotation begun where the CA lives (as `watchkeep ca rotate` begins it)
    old, new = rotate_ca(SitePKI(web.site.home))
    page = admin_page(web, "https")
    open_view(page, "certificates")
    # Then the page names the new CA and how far the site has moved to it, as the API says
    assert page.text_content("#ca-fingerprint") == new.fingerprint
    page.wait_for_selector("#rotation progress")
    rotation = off_the_loop(web.site.api, "GET", "/api/v1/ca/details")["rotation"]
    assert rotation["earlier_cas"] == [old.fingerprint]
    text = page.inner_text("#rotation")
    assert f"Certificates issued by the new CA: {rotation['certificates_from_new_ca']} of " in text
    assert page.get_attribute("#rotation progress", "max") == str(rotation["certificates"])
    shoot_and_check(web, page, "13-ca-rotation")
    page.close()
