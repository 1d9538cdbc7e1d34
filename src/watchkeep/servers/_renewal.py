"""Automatic renewal by the management server: every active certificate of the site is
re-issued with a new key at 2/3 of its lifetime (with jitter), written where its server
reads it (the key 0600 for the service account), and hot-reloaded by that server.

A failed renewal is retried with back-off and reported; it never touches the certificate
that still works (the new files replace the old ones only once they are complete).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchkeep._home import Home
from watchkeep.errors import WatchkeepError
from watchkeep.pki import SitePKI
from watchkeep.pki._lifecycle import renewal_time

__all__ = ["RenewalState", "Renewer", "install_trust_payload", "trust_payload"]

log = logging.getLogger("watchkeep.renewal")
MIN_BACKOFF = 60.0
MAX_BACKOFF = 3600.0


@dataclass
class RenewalState:
    name: str
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_error: str | None = None
    last_renewed: dt.datetime | None = None
    serial: str | None = None

    def as_json(self) -> dict[str, Any]:
        def iso(v: dt.datetime | None) -> str | None:
            return v.strftime("%Y-%m-%dT%H:%M:%SZ") if v else None

        return {
            "name": self.name,
            "failures": self.failures,
            "retry_at": iso(self.retry_at),
            "last_error": self.last_error,
            "last_renewed": iso(self.last_renewed),
            "serial": self.serial,
        }


@dataclass
class Renewer:
    ca_home: Path
    passphrase: bytes | None
    renew_at: float
    jitter: float
    states: dict[str, RenewalState] = field(default_factory=dict)

    def pki(self) -> SitePKI:
        return SitePKI(Home(self.ca_home), passphrase=self.passphrase)

    def due(self, now: dt.datetime) -> list[str]:
        """Names of active certificates whose renewal time has come (and that may retry)."""
        names = []
        for record in self.pki().certificates():
            if record.key_path is None:
                continue  # signed from a CSR: the key is on the server, which must ask anew
            when = renewal_time(
                record.not_before,
                record.not_after,
                serial=record.serial,
                renew_at=self.renew_at,
                jitter=self.jitter,
            )
            state = self.states.get(record.name)
            if now >= when and (state is None or state.retry_at is None or now >= state.retry_at):
                names.append(record.name)
        return names

    def renew(self, name: str, now: dt.datetime) -> RenewalState:
        state = self.states.setdefault(name, RenewalState(name))
        try:
            record = self.pki().renew(name)
        except (WatchkeepError, OSError) as exc:
            state.failures += 1
            delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (state.failures - 1))
            state.retry_at = now + dt.timedelta(seconds=delay)
            state.last_error = str(exc)
            log.warning(
                "[cert.expiry_warning] renewing %s failed (attempt %d, next in %.0f s); the "
                "current certificate stays in place: %s",
                name,
                state.failures,
                delay,
                exc,
            )
            return state
        state.failures = 0
        state.retry_at = None
        state.last_error = None
        state.last_renewed = now
        state.serial = record.serial
        log.info(
            "renewed %s: new serial %s, new key, not after %s",
            name,
            record.serial,
            record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return state

    async def run_once(self, now: dt.datetime) -> list[RenewalState]:
        names = await asyncio.to_thread(self.due, now)
        return [await asyncio.to_thread(self.renew, name, now) for name in names]


def trust_payload(pki: SitePKI) -> dict[str, Any]:
    """What every trust store of the site must hold: the CA bundle, retired CAs, CRLs."""
    from cryptography.hazmat.primitives import serialization

    from watchkeep.pki import fingerprint
    from watchkeep.pki._rotation import refresh_crls, retired_fingerprints, trust_bundle

    return {
        "cas": [c.public_bytes(serialization.Encoding.PEM).decode() for c in trust_bundle(pki)],
        "retired": retired_fingerprints(pki),
        "crls": [p.decode() for p in refresh_crls(pki)],
        "bundle_fingerprints": [fingerprint(c) for c in trust_bundle(pki)],
    }


def install_trust_payload(
    directory: Path, trust: dict[str, Any], *, log_as: str, authenticated: bool = True
) -> None:
    """Keep a trust store in step with the site: CA rotation and fresh CRLs.

    New CAs and retirements are taken only from an authenticated source (the management
    server over verified TLS, vouched for by a CA this store already trusts). CRLs are
    signed, so they are taken from any source once their signature verifies against a
    trusted CA."""
    from cryptography import x509

    from watchkeep.pki import fingerprint
    from watchkeep.tls import TrustMaterial
    from watchkeep.trust import DirectoryTrustStore, subject_hash

    store = DirectoryTrustStore(directory)
    trusted = {e.sha256_fingerprint for e in store.entries()}
    if authenticated:
        for pem in trust.get("cas", []):
            try:
                cert = x509.load_pem_x509_certificate(str(pem).encode())
            except ValueError:
                continue
            if fingerprint(cert) not in trusted:
                store.install(cert)
                trusted.add(fingerprint(cert))
                log.info(
                    "%s: now trusts CA %s (%s)",
                    log_as,
                    cert.subject.rfc4514_string(),
                    fingerprint(cert),
                )
        for retired in trust.get("retired", []):
            if str(retired) in trusted:
                store.remove(str(retired))
                log.info("%s: no longer trusts the retired CA %s", log_as, retired)
    cas = TrustMaterial.load(directory).certificates()
    for pem in trust.get("crls", []):
        data = str(pem).encode()
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            continue
        issuer = next((c for c in cas if c.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            continue
        target = directory / f"{subject_hash(crl.issuer)}.r0"
        if _newer(crl, target):
            store.install_crl(data)


def _newer(crl: Any, installed: Path) -> bool:
    """Only a newer CRL replaces the installed one: an old copy arriving late (a cached
    payload, a slow link) must never undo a revocation."""
    from cryptography import x509

    try:
        current = x509.load_pem_x509_crl(installed.read_bytes())
    except (OSError, ValueError):
        return True
    if current.issuer != crl.issuer:
        return True

    def number(c: Any) -> int:
        try:
            return int(c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        except x509.ExtensionNotFound:
            return -1

    if number(crl) != number(current):
        return bool(number(crl) > number(current))
    return bool(crl.last_update_utc > current.last_update_utc)
