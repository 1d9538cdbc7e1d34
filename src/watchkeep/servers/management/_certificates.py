"""The site's certificates over the API (administrators only), with the CA home the
management server renews with (``[site] ca_home``): the inventory as `cert list --json`
gives it, with each certificate's renewal state; a revocation as `cert revoke` makes it
(a new CRL, into the trust stores the home manages and out to every server with the next
configuration push); the CA as `ca show --json` describes it, with a rotation's progress.

Everything goes through :class:`watchkeep.pki.SitePKI`, as the CLI does: the API adds
who may ask, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from watchkeep._clock import utcnow_to_second
from watchkeep._home import Home
from watchkeep._names import parse_duration
from watchkeep.pki import (
    REVOCATION_REASONS,
    SitePKI,
    fingerprint,
    load_certificate,
    record_to_json,
)
from watchkeep.pki._lifecycle import renewal_time
from watchkeep.pki._rotation import archived_authorities
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._renewal import Renewer
from watchkeep.servers.management._http import Refused
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.store import CertificateRecord
from watchkeep.trust import refresh_crl_in_stores

__all__ = ["Certificates"]

log = logging.getLogger("watchkeep.management")


class Certificates:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        renewer: Renewer | None,
        *,
        spawn_push: Callable[[], None],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self.renewer = renewer
        self._spawn_push = spawn_push

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/certificates", self.list_certificates)
        router.add_post("/api/v1/certificates/{name}/revoke", self.revoke)
        router.add_get("/api/v1/ca/details", self.ca_details)

    def _pki(self, *, signing: bool) -> SitePKI:
        if self.config.ca_home is None:
            raise Refused(
                problem(
                    409,
                    "no CA here",
                    f"{self.config.name} holds no CA home: the site's certificates are "
                    "managed with the CLI where the CA is",
                    code="pki.ca_home",
                    server=self.config.name,
                    fix=f"set [site] ca_home in {self.config.path}, or use watchkeep cert ...",
                )
            )
        passphrase = self.config.ca_passphrase
        return SitePKI(
            Home(self.config.ca_home),
            passphrase=passphrase.encode() if signing and passphrase else None,
        )

    async def list_certificates(self, request: web.Request) -> web.Response:
        """`cert list --json` (``?all=1``: with superseded and revoked ones,
        ``?expiring_within=30d``), each with ``renewal``: the automatic renewal's state
        (failures, next try, last error) where it has one."""
        self.sessions.claims(request, role="administrator")
        within_text = request.query.get("expiring_within")
        # a malformed duration is a WatchkeepError: a 400 problem naming the fix
        within = parse_duration(within_text) if within_text else None
        pki = self._pki(signing=False)
        records = await asyncio.to_thread(
            pki.certificates,
            include_history=request.query.get("all") in ("1", "true"),
            expiring_within=within,
        )
        renewals = self.renewer.states if self.renewer is not None else {}
        now = utcnow_to_second()
        return web.json_response(
            [
                {
                    **record_to_json(r, now),
                    "issuer_fingerprint": r.issuer_fingerprint,
                    "next_renewal": self._next_renewal(r),
                    "renewal": renewals[r.name].as_json() if r.name in renewals else None,
                }
                for r in records
            ]
        )

    def _next_renewal(self, record: CertificateRecord) -> str | None:
        """When this server renews ``record`` (None: it does not, as for a certificate
        signed from a CSR, whose key it does not hold, or one no longer active)."""
        if self.renewer is None or record.key_path is None or record.status != "active":
            return None
        when = renewal_time(
            record.not_before,
            record.not_after,
            serial=record.serial,
            renew_at=self.renewer.renew_at,
            jitter=self.renewer.jitter,
        )
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    async def revoke(self, request: web.Request) -> web.Response:
        """`cert revoke NAME --reason R --json`: the revoked record, and the trust stores
        that got the new CRL (the site's servers get it with the push made now)."""
        claims = self.sessions.claims(request, role="administrator")
        body = await json_object(request)
        reason = body.get("reason", "unspecified")
        if not isinstance(reason, str):
            return problem(400, "bad revocation", "reason must be a string")
        name = request.match_info["name"]
        pki = self._pki(signing=True)
        record = await asyncio.to_thread(pki.revoke, name, reason=reason)
        refreshed = await asyncio.to_thread(refresh_crl_in_stores, pki.home)
        self._spawn_push()
        log.warning(
            "%s: certificate %s (serial %s) revoked by %r: %s",
            self.config.name,
            record.name,
            record.serial,
            claims.get("sub"),
            reason,
        )
        return web.json_response(
            {
                **record_to_json(record, utcnow_to_second()),
                "trust_stores_refreshed": [str(r.store) for r in refreshed if r.error is None],
                "trust_store_errors": {str(r.store): r.error for r in refreshed if r.error},
            }
        )

    async def ca_details(self, request: web.Request) -> web.Response:
        """`ca show --json`, the revocation reasons, and ``rotation``: while an earlier CA
        is still trusted, how far the site has moved to the new one."""
        self.sessions.claims(request, role="administrator")
        pki = self._pki(signing=False)
        described = await asyncio.to_thread(pki.describe_ca)
        rotation = await asyncio.to_thread(self._rotation, pki, described["sha256_fingerprint"])
        return web.json_response(
            {
                **described,
                "revocation_reasons": list(REVOCATION_REASONS),
                "rotation": rotation,
            }
        )

    def _rotation(self, pki: SitePKI, current: str) -> dict[str, Any] | None:
        """Certificates issued by the new CA, and servers whose trust store holds it, out
        of all; None when no earlier CA is still trusted (no rotation under way)."""
        earlier = [fingerprint(load_certificate(d / "ca.pem")) for d in archived_authorities(pki)]
        if not earlier:
            return None
        records = pki.certificates()
        servers = self.site.servers()
        trusting = [
            s.name
            for s in servers
            if s.readiness is not None and current in s.readiness.trusted_ca_fingerprints
        ]
        return {
            "new_ca": current,
            "earlier_cas": earlier,
            "certificates": len(records),
            "certificates_from_new_ca": sum(1 for r in records if r.issuer_fingerprint == current),
            "certificates_from_earlier_cas": sorted(
                r.name for r in records if r.issuer_fingerprint != current
            ),
            "servers": len(servers),
            "servers_trusting_new_ca": trusting,
        }
