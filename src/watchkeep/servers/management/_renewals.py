"""Renewals the management server signs: every server sends a CSR with the certificate it
has (``POST /api/v1/renewals``) and the management server signs it through its ``ca_home``
for exactly the names of that certificate (``pki._renewal``).

Who asks is proven by the certificate itself: by mutual TLS when the management server is
encrypted, by a signature made with its key when it is not (``servers._renewal``), so
that renewal never rests on a registration key or on the link being encrypted. A replayed
signed request is refused (each signature is accepted once within its time window).

Every server reports its renewals (next one due, failed attempts) in its heartbeats; they
are kept here for ``site status`` and ``doctor``. ``GET /api/v1/crls`` hands out the
site's CRLs to anyone: they are signed, and a server that was cut off for longer than a
CRL lives (a week) needs fresh ones before it can verify anybody again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._clock import utcnow_to_second
from watchkeep._home import Home
from watchkeep.errors import RenewalRefused, WatchkeepError
from watchkeep.pki import SitePKI, san_dns_names
from watchkeep.pki._renewal import renew_from_csr, trusted_issuer
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._renewal import (
    PROOF_WINDOW,
    RenewalState,
    rejoin_command,
    verify_renewal_request,
)
from watchkeep.servers.management._site import SiteView

__all__ = ["Renewals"]

log = logging.getLogger("watchkeep.management")


class Renewals:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        trust_payload: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.site = site
        self.trust_payload = trust_payload
        self.reports: dict[str, RenewalState] = {}  # server name -> as its heartbeat said
        self._reported: dict[str, object] = {}  # ... and as it was sent
        self.signed = 0  # renewals signed since start
        self._pki: tuple[object, SitePKI] | None = None
        self._seen: dict[bytes, dt.datetime] = {}  # signatures accepted, until they expire

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/renewals", self.renew)
        router.add_get("/api/v1/crls", self.crls)

    def heard(self, name: str, report: object) -> None:
        """What ``name``'s heartbeat says of its renewals (parsed again only when it says
        something new: it says the same every second)."""
        if report is not None and self._reported.get(name) != report:
            self.reports[name] = RenewalState.from_json(report)
            self._reported[name] = report

    def pki(self) -> SitePKI:
        """The CA home, opened again when its CA changes (a rotation by the CLI)."""
        assert self.config.ca_home is not None
        home = Home(self.config.ca_home)
        try:
            st = home.ca_cert.stat()
            stamp: object = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamp = None
        if self._pki is None or self._pki[0] != stamp:
            passphrase = self.config.ca_passphrase.encode() if self.config.ca_passphrase else None
            self._pki = (stamp, SitePKI(home, passphrase=passphrase))
        return self._pki[1]

    # -- the API ---------------------------------------------------------------------------

    async def renew(self, request: web.Request) -> web.Response:
        if self.config.ca_home is None:
            return problem(
                503,
                "CA offline",
                f"{self.config.name} holds no CA (no [site] ca_home): the CA is offline and "
                "cannot sign renewals over the network",
                code="cert.validity",
                server=self.config.name,
                fix="on the CA's machine: watchkeep cert sign-csr CSR --role ROLE --replace, "
                "then install the files on the server (or set [site] ca_home)",
                # A site's other management server may hold the CA: the server asks it.
                ca_offline=True,
            )
        body = await json_object(request)
        peer = _peer_certificate(request)
        if peer is None and not body.get("certificate"):
            return problem(
                401,
                "certificate required",
                "a renewal is asked with the certificate in use: present it (mutual TLS), or "
                "send it signed with its key",
                code="cert.chain",
                fix="renew from the server that holds the certificate and its key",
            )
        try:
            answer = await asyncio.to_thread(self.sign, body, peer)
        except RenewalRefused as exc:
            log.warning("%s: refused a renewal from %s: %s", self.config.name, request.remote, exc)
            return problem(
                403,
                "renewal refused",
                exc.describe(),
                code="cert.validity" if exc.rejoin else "cert.chain",
                fix=exc.fix,
                rejoin=exc.rejoin,
            )
        except (WatchkeepError, OSError) as exc:
            log.error("%s: cannot sign a renewal: %s", self.config.name, exc)
            return problem(
                503,
                "CA unavailable",
                f"{self.config.name} cannot sign with its CA now: {exc}",
                code="cert.validity",
                fix="check the CA home and its passphrase on the management server",
            )
        # The trust bundle too (CAs, retired CAs, CRLs): a server takes its CAs only from
        # an encrypted link, its CRLs from any (they are signed).
        answer["trust"] = self.trust_payload()
        return web.json_response(answer)

    async def crls(self, _request: web.Request) -> web.Response:
        crls = self.trust_payload().get("crls", [])
        if not crls:
            return problem(404, "no CRL", f"{self.config.name} holds no CA", code="cert.revoked")
        return web.Response(
            text="".join(str(c) for c in crls), content_type="application/x-pem-file"
        )

    # -- signing ---------------------------------------------------------------------------

    def sign(self, body: dict[str, Any], peer: x509.Certificate | None) -> dict[str, Any]:
        """Check a renewal request and sign it; the answer (chain and trust bundle)."""
        now = utcnow_to_second()
        presented, csr = verify_renewal_request(body, audience=self.config.host, now=now, peer=peer)
        if peer is None:
            self._refuse_replay(str(body.get("signature", "")), now)
        pki = self.pki()
        record = renew_from_csr(pki, presented, csr, rejoin=self._rejoin(presented), now=now)
        self.signed += 1
        cert = x509.load_pem_x509_certificate(Path(record.cert_path).read_bytes())
        issuer = trusted_issuer(pki, cert)
        assert issuer is not None  # signed by the current CA just now
        log.info(
            "%s: renewed %s: serial %s -> %s, not after %s",
            self.config.name,
            record.name,
            format(presented.serial_number, "x"),
            record.serial,
            f"{record.not_after:%Y-%m-%dT%H:%M:%SZ}",
        )
        return {
            "name": record.name,
            "serial": record.serial,
            "not_after": f"{record.not_after:%Y-%m-%dT%H:%M:%SZ}",
            "chain": "".join(
                c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, issuer)
            ),
        }

    def _rejoin(self, presented: x509.Certificate) -> str:
        hosts = san_dns_names(presented)
        # The server of one of its names: a row each, not the whole site (a thousand
        # servers renewing would otherwise each read every server).
        server = next((s for s in map(self.site.server_with_host, hosts) if s is not None), None)
        if server is None:
            return rejoin_command("NAME", "ROLE", hosts[0] if hosts else "HOST")
        return rejoin_command(server.name, server.role.value, server.host)

    def _refuse_replay(self, signature: str, now: dt.datetime) -> None:
        for key, until in list(self._seen.items()):
            if until < now:
                del self._seen[key]
        digest = hashlib.sha256(signature.encode()).digest()
        if digest in self._seen:
            raise RenewalRefused(
                "renewal request",
                "this signed request was used already",
                fix="make a new request (a new key and CSR)",
            )
        self._seen[digest] = now + 2 * PROOF_WINDOW

    def metrics(self) -> str:
        return (
            "# HELP watchkeep_renewals_signed_total Renewals this management server signed.\n"
            "# TYPE watchkeep_renewals_signed_total counter\n"
            f"watchkeep_renewals_signed_total {self.signed}\n"
        )


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The certificate the caller presented in a verified TLS handshake, if any."""
    if request.transport is None:
        return None
    sslobj = request.transport.get_extra_info("ssl_object")
    if not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = sslobj.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None
