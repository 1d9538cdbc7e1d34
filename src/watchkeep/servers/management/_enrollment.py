"""Servers joining the site with a one-time token, and what they prove themselves with
afterwards.

- ``POST /api/v1/enrollments`` (administrators): a token for one server, binding its name,
  role, host name and addresses; kept as a hash of its secret. ``GET`` lists the pending
  ones (never a secret), ``DELETE /api/v1/enrollments/NAME`` withdraws them.
- ``POST /api/v1/join`` (the token is the credential): the server's CSR, signed through the
  CA home for exactly the names the token binds; the answer is the certificate, its chain,
  the site's trust bundle (its CAs and CRLs) and where the management server is. The token
  is consumed by one SQL statement, so it works once, also across restarts and races.
- A server that joined has no registration key: its heartbeats are proven by its
  certificate, with mutual TLS on an encrypted link or by a signature made with the same
  certificate's key on a plaintext one (watchkeep.servers._signed). Its certificate must
  name the host it joined as.

A management server without ``[site] ca_home`` keeps the CA offline: every enrollment call
then answers one problem saying so, and servers are prepared with CSRs and files as before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from watchkeep._clock import utcnow_to_second
from watchkeep._home import Home
from watchkeep._names import parse_duration, validate_host_name
from watchkeep.errors import WatchkeepError
from watchkeep.pki import Role, SitePKI, fingerprint
from watchkeep.pki._enrollment import (
    DEFAULT_TTL,
    JOIN_KEY,
    JOINABLE_ROLES,
    MAX_TTL,
    EnrollmentToken,
    csr_names_refusal,
    join_key,
    join_proof_refusal,
    sign_joining_server,
    validate_server_name,
)
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._signed import (
    SIGNATURE_HEADER,
    SignedRequestRefused,
    verify_signed_request,
)
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import ServerRole
from watchkeep.store import Enrollment, EnrollmentStore
from watchkeep.tls import TrustMaterial

__all__ = ["Enrollments"]

log = logging.getLogger("watchkeep.management")

MAX_CSR = 64 * 1024
_MAX_REMEMBERED = 10_000


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csr(pem: str) -> x509.CertificateSigningRequest | str:
    """The CSR of a join, or why it is none."""
    if len(pem) > MAX_CSR:
        return "too large"
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        return str(exc).split("\n")[0]
    return csr if valid else "its signature does not verify"


def join_command(token: str) -> str:
    return f"watchkeep join {token}"


class Enrollments:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        trust: Callable[[], TrustMaterial],
        trust_payload: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self.trust = trust
        self.trust_payload = trust_payload  # the site's CAs and CRLs, as pushed to servers
        self._signer: tuple[int, SitePKI] | None = None
        self.store = EnrollmentStore(site.store.db)
        # The time of the last signed heartbeat accepted from each server (replays refused).
        self._last_signed: dict[str, int] = {}
        # What each server that sends heartbeats joined with (None: it did not), read from
        # the database once: only this process's joins change it.
        self._joined: dict[str, Enrollment | None] = {}
        self._trust: tuple[object, list[x509.Certificate], list[Any]] | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/enrollments", self.create)
        router.add_get("/api/v1/enrollments", self.list_pending)
        router.add_delete("/api/v1/enrollments/{name}", self.withdraw)
        router.add_post("/api/v1/join", self.join)

    # -- the CA ----------------------------------------------------------------------------

    def _offline(self) -> web.Response | None:
        if self.config.ca_home is not None:
            return None
        return problem(
            503,
            "CA offline",
            f"the site CA is kept offline: {self.config.name} holds no CA home, so it "
            "cannot sign certificates for servers that join",
            code="enroll.ca_offline",
            server=self.config.name,
            fix="prepare the server with a CSR signed on the CA's machine (watchkeep cert "
            "sign-csr CSR --role ROLE), or set [site] ca_home on the management server",
        )

    def _pki(self) -> SitePKI:
        """The CA home, opened once (its inventory's database, its key loaded on the first
        signature) and again when its CA certificate changes (a rotation)."""
        assert self.config.ca_home is not None
        home = Home(self.config.ca_home)
        try:
            stamp = home.ca_cert.stat().st_mtime_ns
        except OSError:
            stamp = 0
        if self._signer is None or self._signer[0] != stamp:
            passphrase = self.config.ca_passphrase.encode() if self.config.ca_passphrase else None
            self._signer = (stamp, SitePKI(home, passphrase=passphrase))
        return self._signer[1]

    # -- administrators --------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        claims = self.sessions.claims(request, role="administrator")
        offline = self._offline()
        if offline is not None:
            return offline
        body = await json_object(request)
        try:
            name = validate_server_name(str(body.get("name", "")))
            role = ServerRole(str(body.get("role", "")))
            host = validate_host_name(str(body.get("host", "")))
            ips = tuple(
                dict.fromkeys(str(ipaddress.ip_address(str(a))) for a in body.get("ips") or [])
            )
            ttl = parse_duration(str(body["ttl"])) if body.get("ttl") else DEFAULT_TTL
        except (ValueError, TypeError) as exc:
            return problem(
                400, "bad enrollment", f"{exc}", fix="see watchkeep enroll create --help"
            )
        if role not in JOINABLE_ROLES:
            return problem(
                400,
                "bad enrollment",
                f"a {role.value} server does not join a site",
                fix="--role is " + ", ".join(r.value for r in JOINABLE_ROLES),
            )
        if ttl > MAX_TTL:
            return problem(
                400,
                "bad enrollment",
                f"a token lives at most {MAX_TTL.days} days, not {body.get('ttl')}",
                fix="pass --ttl 7d or less",
            )
        clash = self._identity_clash(name, role, host)
        if clash is not None:
            return clash
        try:
            ca = await asyncio.to_thread(lambda: self._pki().ca_certificate())
        except WatchkeepError as exc:
            return problem(503, "CA not readable", exc.describe(), server=self.config.name,
                           fix=exc.fix)  # fmt: skip
        now = utcnow_to_second()
        secret = EnrollmentToken.new_secret()
        enrollment = self.store.add(
            name=name,
            role=role.value,
            host=host,
            ips=ips,
            join_key=join_key(secret),
            now=now,
            expires_at=now + ttl,
            created_by=str(claims.get("sub")),
        )
        if enrollment is None:
            return problem(
                409,
                "token pending",
                f"{name} has a pending enrollment token already",
                code="enroll.pending",
                server=name,
                fix=f"use it, or withdraw it first: watchkeep enroll revoke {name}",
            )
        token = EnrollmentToken(
            ms_host=self.config.host,
            ms_addresses=(self.config.address,),
            ms_port=self.config.ports["api"],
            ms_tls=self.site.encryption,
            ca_fingerprint=fingerprint(ca),
            name=name,
            role=role,
            host=host,
            ips=ips,
            expires_at=enrollment.expires_at,
            secret=secret,
        ).encode()
        log.info(
            "%s: enrollment token for %s (%s, %s) made by %r, expires %s",
            self.config.name,
            name,
            role.value,
            host,
            claims.get("sub"),
            _iso(enrollment.expires_at),
        )
        return web.json_response(
            {
                "name": name,
                "role": role.value,
                "host": host,
                "ips": list(ips),
                "expires_at": _iso(enrollment.expires_at),
                "token": token,
                "command": join_command(token),
            },
            status=201,
        )

    def _identity_clash(self, name: str, role: ServerRole, host: str) -> web.Response | None:
        """A token may bring back a registered server (its machine rebuilt), never change
        what it is, nor take the host of another."""
        for server in self.site.servers():
            if server.name == name and (server.role, server.host) != (role, host):
                return problem(
                    409,
                    "server identity is fixed",
                    f"{name} is registered as a {server.role.value} server on {server.host}",
                    code="auth.registration",
                    server=name,
                    fix=f"join it as --role {server.role.value} --host {server.host}, or "
                    "choose another name",
                )
            if server.name != name and server.host == host:
                return problem(
                    409,
                    "host already registered",
                    f"{host} is the host of {server.name}",
                    code="auth.registration",
                    server=name,
                    fix=f"choose another host for {name}",
                )
        return None

    async def list_pending(self, request: web.Request) -> web.Response:
        self.sessions.claims(request, role="administrator")
        offline = self._offline()
        if offline is not None:
            return offline
        return web.json_response(
            [
                {
                    "name": e.name,
                    "role": e.role,
                    "host": e.host,
                    "ips": list(e.ips),
                    "created_at": _iso(e.created_at),
                    "created_by": e.created_by,
                    "expires_at": _iso(e.expires_at),
                }
                for e in self.store.pending(utcnow_to_second())
            ]
        )

    async def withdraw(self, request: web.Request) -> web.Response:
        claims = self.sessions.claims(request, role="administrator")
        offline = self._offline()
        if offline is not None:
            return offline
        name = request.match_info["name"]
        if not self.store.withdraw(name, utcnow_to_second()):
            return problem(
                404,
                "no pending token",
                f"{name} has no pending enrollment token",
                code="enroll.token",
                server=name,
                fix="watchkeep enroll list shows the pending ones",
            )
        log.info("%s: enrollment token for %s withdrawn by %r", self.config.name, name,
                 claims.get("sub"))  # fmt: skip
        return web.json_response({"name": name, "withdrawn": True})

    # -- the joining server ----------------------------------------------------------------

    def _refused(
        self, status: int, detail: str, fix: str, server: str | None = None
    ) -> web.Response:
        return problem(
            status,
            "join refused",
            detail,
            code="enroll.token",
            server=server,
            fix=fix,
        )

    async def join(self, request: web.Request) -> web.Response:
        offline = self._offline()
        if offline is not None:
            return offline
        body = await json_object(request)
        ask_again = "ask the administrator for a new token (watchkeep enroll create)"
        key = str(body.get("join_key", ""))
        if not JOIN_KEY.fullmatch(key):
            return self._refused(
                400,
                "the join carries no token key (a join of an older watchkeep, which sent the "
                "token's secret itself, is no longer taken)",
                f"join with this version of watchkeep; {ask_again} if it is used",
            )
        enrollment = self.store.by_join_key(key)
        if enrollment is None:
            return self._refused(
                403, "the token is not one this management server issued (its secret is "
                "unknown: tampered, from another site, or made before the upgrade that "
                "withdrew the pending tokens)", ask_again,
            )  # fmt: skip
        bound = (enrollment.name, enrollment.role, enrollment.host, tuple(enrollment.ips))
        said = (body.get("name"), body.get("role"), body.get("host"), body.get("ips"))
        said = (*said[:3], tuple(said[3]) if isinstance(said[3], list) else said[3])
        if said != bound:
            told = ", ".join(str(x) for x in [said[2], *(said[3] or ())])
            return self._refused(
                403,
                f"the token was issued for {enrollment.name} ({enrollment.role} server "
                f"{', '.join([enrollment.host, *enrollment.ips])}), not for {said[0]} "
                f"({said[1]} server {told}): it was altered",
                f"join with the token exactly as printed, or {ask_again}",
                enrollment.name,
            )
        now = utcnow_to_second()
        why = self._unusable(enrollment, now)
        if why is not None:
            return self._refused(403, why, ask_again, enrollment.name)
        csr = _csr(str(body.get("csr", "")))
        if isinstance(csr, str):
            return self._refused(400, f"the CSR is not valid ({csr})", "run watchkeep join again")
        refusal = join_proof_refusal(key, body.get("proof"), self.config.host, enrollment.name, csr)
        if refusal is not None:
            log.warning(
                "%s: a join for %s from %s refused: %s",
                self.config.name,
                enrollment.name,
                request.remote or "unknown",
                refusal,
            )
            return self._refused(403, refusal, f"run watchkeep join again with the token "
                                 f"itself on {enrollment.host}", enrollment.name)  # fmt: skip
        refusal = csr_names_refusal(csr, enrollment.host, enrollment.ips)
        if refusal is not None:
            return problem(
                403,
                "join refused",
                f"{enrollment.name}: {refusal}",
                code="cert.hostname",
                server=enrollment.name,
                fix="make the CSR for exactly those names (watchkeep join does)",
            )
        if not self.store.consume(enrollment.id, now):
            # Another join took it between the check above and now.
            latest = self.store.by_join_key(key)
            why = self._unusable(latest, now) if latest else None
            return self._refused(403, why or "the token was just used", ask_again, enrollment.name)
        try:
            record, cert, ca = await asyncio.to_thread(self._sign, csr, enrollment, now)
        except (WatchkeepError, OSError) as exc:
            self.store.give_back(enrollment.id)
            log.error("%s: cannot sign the join of %s: %s", self.config.name, enrollment.name, exc)
            return problem(
                503,
                "CA failed",
                f"{self.config.name} could not sign for {enrollment.name}: {exc}",
                code="enroll.ca_offline",
                server=self.config.name,
                fix="read the management server's log; the token is still valid",
            )
        self.store.record_serial(enrollment.id, record.serial)
        self._joined.pop(enrollment.name, None)
        log.info(
            "%s: %s joined as %s server %s (certificate serial %s, from %s)",
            self.config.name,
            enrollment.name,
            enrollment.role,
            enrollment.host,
            record.serial,
            request.remote or "unknown",
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return web.json_response(
            {
                "name": enrollment.name,
                "role": enrollment.role,
                "host": enrollment.host,
                "ips": list(enrollment.ips),
                "serial": record.serial,
                "not_after": _iso(record.not_after),
                "certificate": pem,
                "chain": pem + ca.public_bytes(serialization.Encoding.PEM).decode(),
                "trust": self.trust_payload(),
                "management": {
                    "name": self.config.name,
                    "host": self.config.host,
                    "address": self.config.address,
                    "port": self.config.ports["api"],
                    "encryption": self.site.encryption,
                },
            },
            status=201,
        )

    def _sign(
        self, csr: x509.CertificateSigningRequest, enrollment: Enrollment, now: dt.datetime
    ) -> tuple[Any, x509.Certificate, x509.Certificate]:
        pki = self._pki()
        record, cert = sign_joining_server(
            pki, csr, Role.parse(enrollment.role), enrollment.host, enrollment.ips, now=now
        )
        return record, cert, pki.authority().certificate

    @staticmethod
    def _unusable(enrollment: Enrollment, now: dt.datetime) -> str | None:
        state = enrollment.state(now)
        if state == "pending":
            return None
        if state == "used":
            when = _iso(enrollment.used_at) if enrollment.used_at else "already"
            return f"the token for {enrollment.name} was used at {when}; a token works once"
        if state == "withdrawn":
            return f"the token for {enrollment.name} was withdrawn by an administrator"
        return f"the token for {enrollment.name} expired at {_iso(enrollment.expires_at)}"

    # -- heartbeats of servers that joined -------------------------------------------------

    def _site_trust(self) -> tuple[list[x509.Certificate], list[Any]]:
        """The CAs and CRLs of this server's trust store, read again when its files change."""
        trust = self.trust()
        stamp = trust.stamp()
        if self._trust is None or self._trust[0] != stamp:
            self._trust = (stamp, trust.certificates(), trust.crls())
        return self._trust[1], self._trust[2]

    def check_heartbeat(
        self,
        request: web.Request,
        name: str,
        body: dict[str, Any],
        role: ServerRole,
        host: str,
        address: str,
    ) -> tuple[bool, web.Response | None]:
        """Whether ``name`` joined with a token, and the refusal of its heartbeat if it is
        not proven: the role and host it joined as, its address among those bound, and on
        a plaintext link a valid signature by its certificate's key (on TLS, the
        registration's own mutual-TLS check proves the certificate)."""
        if name not in self._joined:
            if len(self._joined) >= _MAX_REMEMBERED:  # names come from anyone's requests
                self._joined.clear()
            self._joined[name] = self.store.joined(name)
        enrollment = self._joined[name]
        if enrollment is None:
            return False, None
        if (role.value, host) != (enrollment.role, enrollment.host) or (
            enrollment.ips and address not in enrollment.ips
        ):
            return True, problem(
                409,
                "server identity is fixed",
                f"{name} joined as {enrollment.role} server {enrollment.host}"
                f"{' at ' + ', '.join(enrollment.ips) if enrollment.ips else ''}, not as "
                f"{role.value} server {host} at {address}",
                code="auth.registration",
                server=name,
                fix=f"run {name} as it joined, or join it again with a new token",
            )
        tls = request.transport is not None and request.transport.get_extra_info("ssl_object")
        if tls:
            return True, None
        cas, crls = self._site_trust()
        try:
            millis = verify_signed_request(
                request.headers,
                request.method,
                request.path,
                body,
                host=enrollment.host,
                cas=cas,
                crls=crls,
                now=dt.datetime.now(dt.UTC),
                not_before_millis=self._last_signed.get(name, 0),
            )
        except SignedRequestRefused as exc:
            return True, problem(
                401,
                "heartbeat not proven",
                f"{name} joined with a token: on a plaintext management link its heartbeats "
                f"must be signed with its certificate's key ({SIGNATURE_HEADER}); this one "
                f"is refused: {exc}",
                code="auth.registration",
                server=name,
                fix=f"run {name} with the certificate and key it joined with (its "
                "server.toml [tls]), or join it again with a new token",
            )
        self._last_signed[name] = millis
        return True, None
