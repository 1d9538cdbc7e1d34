"""What the management server publishes for everyone: the site CAs and their CRLs.

Clients other than watchkeep (browsers, ffmpeg, VLC, scanners such as testssl.sh) check
revocation where a certificate tells them to: its CRL distribution point and its AIA
caIssuers URL (see :class:`watchkeep.pki.PublishedLocations`). The management server that
holds the CA serves those documents on a listener of its own, ``[ports] publish``:

* always plaintext HTTP, as step-ca and Vault PKI publish theirs: a CRL and a CA
  certificate are signed, and a client checking revocation must not need TLS first;
* GET (and HEAD) only; ``/ca/NAME.crt`` is the CA certificate and ``/crl/NAME.crl`` its
  CRL, both DER (``application/pkix-cert``, ``application/pkix-crl``, RFC 2585), NAME the
  start of the CA's SHA-256 fingerprint. Every CA still trusted is published, so during a
  rotation the old CA's and the new CA's documents are there side by side;
* CRLs are the ones the management server hands its servers (``refresh_crls``: re-signed
  once a day, and days before their nextUpdate), re-read at least once a minute and as
  soon as a file of the CA changes (a revocation).

``GET /api/v1/ca`` (here and on the management API) serves the PEM bundle of the site's
CAs, unauthenticated: `watchkeep trust install --from URL --fingerprint HEX` fetches it
without verifying the connection and installs only the CA with that fingerprint, as
`step ca bootstrap` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._home import Home
from watchkeep.errors import WatchkeepError
from watchkeep.pki import PublishedLocations, SitePKI
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._listener import Listener
from watchkeep.servers._problems import problem

__all__ = ["CA_BUNDLE_TYPE", "Publication", "Publisher", "ca_bundle_route", "start_publisher"]

log = logging.getLogger("watchkeep.publish")

CA_BUNDLE_TYPE = "application/pem-certificate-chain"  # RFC 8555 9.1
REFRESH = 60.0  # seconds: documents are re-read at least this often
CACHE_CONTROL = "max-age=60"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Publication:
    """The published documents of one CA home: path -> (body, content type)."""

    def __init__(self, ca_home: Path, passphrase: bytes | None) -> None:
        self.ca_home = ca_home
        self.passphrase = passphrase
        self._cache: tuple[object, dict[str, tuple[bytes, str]]] | None = None
        self._lock = asyncio.Lock()

    def _stamp(self) -> object:
        ca_dir = Home(self.ca_home).ca_dir
        try:
            files = sorted((str(p), p.stat().st_mtime_ns) for p in ca_dir.rglob("*") if p.is_file())
        except OSError:
            files = []
        return int(time.monotonic() // REFRESH), tuple(files)

    def build(self) -> dict[str, tuple[bytes, str]]:
        """Read the CA home (re-signing CRLs that are due) and lay out every document."""
        from watchkeep.pki._rotation import refresh_crls, trust_bundle

        pki = SitePKI(Home(self.ca_home), passphrase=self.passphrase)
        cas = trust_bundle(pki)
        crls = [x509.load_pem_x509_crl(pem) for pem in refresh_crls(pki)]
        documents: dict[str, tuple[bytes, str]] = {
            "/api/v1/ca": (
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas),
                CA_BUNDLE_TYPE,
            )
        }
        for ca in cas:
            name = PublishedLocations.name_of(ca)
            documents[f"/ca/{name}.crt"] = (
                ca.public_bytes(serialization.Encoding.DER),
                "application/pkix-cert",
            )
            crl = next((c for c in crls if _signed_by(c, ca)), None)
            if crl is not None:
                documents[f"/crl/{name}.crl"] = (
                    crl.public_bytes(serialization.Encoding.DER),
                    "application/pkix-crl",
                )
        return documents

    async def documents(self) -> dict[str, tuple[bytes, str]]:
        async with self._lock:
            stamp = self._stamp()
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            try:
                documents = await asyncio.to_thread(self.build)
            except (WatchkeepError, OSError, ValueError) as exc:
                log.warning("cannot read the CA home %s to publish it: %s", self.ca_home, exc)
                if self._cache is None:
                    raise
                return self._cache[1]  # the last good documents, until the CA reads again
            self._cache = (stamp, documents)
            return documents

    async def serve(self, request: web.Request) -> web.StreamResponse:
        try:
            documents = await self.documents()
        except (WatchkeepError, OSError, ValueError):
            return problem(
                503,
                "CA not readable",
                "the management server cannot read its CA home now; see its log",
            )
        found = documents.get(request.path)
        if found is None:
            return problem(
                404,
                "not published",
                f"nothing is published at {request.path}: the CA certificates are at "
                "/ca/NAME.crt and their CRLs at /crl/NAME.crl (watchkeep ca show --json "
                "names them)",
            )
        body, content_type = found
        return web.Response(
            body=body, content_type=content_type, headers={"Cache-Control": CACHE_CONTROL}
        )

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ca/{name}.crt", self.serve)
        app.router.add_get("/crl/{name}.crl", self.serve)
        app.router.add_get("/api/v1/ca", self.serve)
        return app


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    """The CRL names ``ca`` as its issuer, by name and key identifier (our CRLs carry an
    AKI, RFC 5280 5.2.1): two CAs of a rotation may share a name, never a key."""
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return crl.issuer == ca.subject and aki.key_identifier == ski.digest


class Publisher:
    """The plaintext publish listener of a management server."""

    def __init__(self, config: ServerConfig, port: int) -> None:
        assert config.ca_home is not None
        self.publication = Publication(
            config.ca_home, config.ca_passphrase.encode() if config.ca_passphrase else None
        )
        self.runner = config.listener_limits.runner(self.publication.application())
        self.listener = Listener(
            config.name,
            "publish",
            self.runner,
            config.address,
            port,
            limits=config.listener_limits,
        )

    async def start(self) -> None:
        await self.runner.setup()
        await self.listener.start(None)  # always plaintext: see the module's docstring

    async def stop(self) -> None:
        await self.listener.stop()
        await self.runner.cleanup()


async def start_publisher(config: ServerConfig) -> Publisher | None:
    """Start the publish listener when the configuration asks for one."""
    if config.publish_port is None or config.ca_home is None:
        return None
    publisher = Publisher(config, config.publish_port)
    await publisher.start()
    return publisher


def ca_bundle_route(config: ServerConfig) -> Handler:
    """GET /api/v1/ca on the management API: the site's CAs as PEM, for anyone.

    From the CA home when this management server holds it (both CAs during a rotation),
    else the CAs of its trust store (which holds the site CA it is verified with)."""
    from watchkeep.tls import TrustMaterial

    def bundle() -> bytes:
        if config.ca_home is not None:
            from watchkeep.pki._rotation import trust_bundle

            cas = trust_bundle(SitePKI(Home(config.ca_home)))
        elif config.trust_store is not None:
            cas = TrustMaterial.load(config.trust_store).certificates()
        else:
            cas = []
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas)

    async def ca_bundle(_request: web.Request) -> web.StreamResponse:
        try:
            body = await asyncio.to_thread(bundle)
        except (WatchkeepError, OSError, ValueError) as exc:
            log.warning("%s: cannot read the site CA to serve it: %s", config.name, exc)
            body = b""
        if not body:
            return problem(
                404,
                "no CA",
                f"{config.name} holds no site CA certificate to hand out; copy the CA "
                "certificate from the CA's home instead (watchkeep ca show prints its path)",
            )
        return web.Response(body=body, content_type=CA_BUNDLE_TYPE)

    return ca_bundle
