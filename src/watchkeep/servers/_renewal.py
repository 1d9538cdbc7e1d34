"""Each server renews its own certificate, over the network, with the certificate it has.

The policy, as cert-manager, certbot and step's renewal daemon have it:

* **When**: at 2/3 of the certificate's lifetime, moved by a jitter fixed by its serial
  (``pki._lifecycle.renewal_time``), and at once when the management server announces that
  the site moves to a new CA (``renew_to`` in the trust bundle, after a rotation).
* **How**: a new key is made on this machine (it never leaves it), with a CSR for the
  names the current certificate holds. The request is authenticated by the current,
  still-valid certificate: on an encrypted management link by mutual TLS; on a plaintext
  one (management encryption off) by a signature of the CSR, the management server's name
  and the time, made with the current key and checked against the current certificate,
  so that renewal never depends on the link being encrypted (``renewal_request``,
  ``verify_renewal_request``). What comes back (a certificate and its CA) is public; it is
  taken only when it is for the new key and this server's names and chains to a CA this
  server trusts. The key and chain replace the old ones together (atomically, the key
  0600), and the server reloads them: open connections carry on, new ones get the new
  certificate (``tls._reload``).
* **When it fails**: the certificate in use stays; the attempt is retried with back-off
  (1 min doubling to 1 h) and every failure is a ``cert.expiry_warning`` line, counted in
  ``/metrics`` and reported in heartbeats to ``site status`` and ``doctor``. A certificate
  that expired or was revoked vouches for nothing: the server says, in one line, how it
  joins again, and stops trying.

The management server renews its own certificate the same way, signing through its
``ca_home`` instead of over the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from watchkeep._files import atomic_write, atomic_write_together
from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, RenewalRefused, WatchkeepError
from watchkeep.pki import SitePKI, fingerprint, san_dns_names, san_ip_addresses
from watchkeep.pki._keys import load_private_key, private_key_pem
from watchkeep.pki._lifecycle import renewal_time
from watchkeep.pki._profiles import generate_key, key_type_of
from watchkeep.servers._signed import sign_message, signature_valid
from watchkeep.tls import Endpoint, ServerIdentity, TrustMaterial

__all__ = [
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "PROOF_WINDOW",
    "RenewalState",
    "SelfRenewal",
    "ask_to_sign",
    "crls_stale",
    "install_trust_payload",
    "rejoin_command",
    "renewal_request",
    "trust_payload",
    "verify_renewal_request",
]

log = logging.getLogger("watchkeep.renewal")
MIN_BACKOFF = 60.0
MAX_SIGNERS_ASKED = 4  # management servers asked in turn for one renewal, when one has no CA
MAX_BACKOFF = 3600.0
PROOF_WINDOW = dt.timedelta(minutes=5)  # how far the signed time may be from the signer's
_PROOF_CONTEXT = b"watchkeep certificate renewal v1\n"

Signer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def rejoin_command(name: str, role: str, host: str) -> str:
    """The one line that brings a server whose certificate can no longer renew back."""
    return (
        f"on the administrator's machine: watchkeep enroll create --name {name} --role {role} "
        f"--host {host}; then on {host}: watchkeep join TOKEN"
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _parse_iso(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass
class RenewalState:
    """What a server knows about its own renewals (kept across restarts, reported)."""

    serial: str | None = None
    next_renewal_at: dt.datetime | None = None
    not_after: dt.datetime | None = None
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    last_error: str | None = None
    last_renewed_at: dt.datetime | None = None
    renewals: int = 0
    rejoin: str | None = None  # set when the certificate can no longer renew itself

    def as_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "next_renewal_at": _iso(self.next_renewal_at),
            "not_after": _iso(self.not_after),
            "failures": self.failures,
            "retry_at": _iso(self.retry_at),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_error": self.last_error,
            "last_renewed_at": _iso(self.last_renewed_at),
            "renewals": self.renewals,
            "rejoin": self.rejoin,
        }

    @classmethod
    def from_json(cls, data: object) -> RenewalState:
        """A state as reported or saved; anything malformed reads as nothing known."""
        if not isinstance(data, dict):
            return cls()

        def text(key: str) -> str | None:
            value = data.get(key)
            return value[:500] if isinstance(value, str) else None

        def whole(key: str) -> int:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            serial=text("serial"),
            next_renewal_at=_parse_iso(data.get("next_renewal_at")),
            not_after=_parse_iso(data.get("not_after")),
            failures=whole("failures"),
            retry_at=_parse_iso(data.get("retry_at")),
            last_attempt_at=_parse_iso(data.get("last_attempt_at")),
            last_error=text("last_error"),
            last_renewed_at=_parse_iso(data.get("last_renewed_at")),
            renewals=whole("renewals"),
            rejoin=text("rejoin"),
        )


# -- the request on the wire ---------------------------------------------------------------


def _proof_message(audience: str, when: str, csr_der: bytes) -> bytes:
    return _PROOF_CONTEXT + f"{audience}\n{when}\n".encode() + hashlib.sha256(csr_der).digest()


def renewal_request(
    leaf: x509.Certificate, current_key: Any, new_key: Any, *, audience: str, now: dt.datetime
) -> dict[str, Any]:
    """The body of ``POST /api/v1/renewals``: a CSR of ``new_key`` for the names of
    ``leaf``, the certificate, and the proof that its holder asks (signed with its key)."""
    hosts = list(san_dns_names(leaf))
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in san_ip_addresses(leaf)]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(new_key, hashes.SHA256())
    )
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    when = _iso(now) or ""
    return {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
        "time": when,
        "signature": base64.b64encode(
            sign_message(current_key, _proof_message(audience, when, csr_der))
        ).decode(),
    }


def verify_renewal_request(
    body: dict[str, Any],
    *,
    audience: str,
    now: dt.datetime,
    peer: x509.Certificate | None,
) -> tuple[x509.Certificate, x509.CertificateSigningRequest]:
    """The certificate that vouches for a renewal request, and its CSR.

    ``peer`` is the certificate the caller presented in a verified TLS handshake (mutual
    TLS): it is the proof, and the body must not name another. Without it (a plaintext
    management link) the body's certificate vouches only with a signature of the CSR, the
    management server's name and a time within ``PROOF_WINDOW`` made by its key. Raises
    RenewalRefused; whether the certificate is still good is for the CA to say."""
    subject = "renewal request"
    try:
        csr = x509.load_pem_x509_csr(str(body["csr"]).encode())
        named = (
            x509.load_pem_x509_certificate(str(body["certificate"]).encode())
            if body.get("certificate")
            else None
        )
    except (KeyError, ValueError, UnsupportedAlgorithm) as exc:
        raise RenewalRefused(
            subject, f"malformed: {exc}", fix="send a PEM CSR and the certificate in use"
        ) from exc
    if peer is not None:
        if named is not None and fingerprint(named) != fingerprint(peer):
            raise RenewalRefused(
                subject,
                "the certificate in the request is not the one presented in the TLS handshake",
                fix="renew with the certificate this server presents",
            )
        return peer, csr
    if named is None:
        raise RenewalRefused(
            subject,
            "no certificate presented (neither by mutual TLS nor in the request)",
            fix="renew with the certificate in use",
        )
    when = _parse_iso(body.get("time"))
    if when is None or abs(now - when) > PROOF_WINDOW:
        raise RenewalRefused(
            f"certificate {named.serial_number:x}",
            "the request's signed time is missing or more than 5 minutes off",
            fix="set this machine's clock right (NTP) and try again",
        )
    try:
        signature = base64.b64decode(str(body.get("signature", "")), validate=True)
    except ValueError:
        signature = b""
    message = _proof_message(
        audience, str(body.get("time")), csr.public_bytes(serialization.Encoding.DER)
    )
    if not signature_valid(named.public_key(), signature, message):
        raise RenewalRefused(
            f"certificate {named.serial_number:x}",
            "the request is not signed by the key of the certificate it presents",
            fix="renew from the server that holds the key",
        )
    return named, csr


# -- the server's side ---------------------------------------------------------------------


@dataclass
class SelfRenewal:
    """One server's renewals of its own certificate (see the module's docstring)."""

    server: str
    role: str
    host: str
    identity: ServerIdentity
    trust: Callable[[], TrustMaterial]
    sign: Signer  # sends a renewal request to the CA, returns its answer
    on_renewed: Callable[[], None]
    state_file: Path
    # the host name of the management server the request goes to, which the proof names
    # (of several management servers, the one this server speaks to now)
    audience: Callable[[], str]
    renew_at: float = 2 / 3
    jitter: float = 0.05
    # The CA the management server asks every server to move to (after a rotation).
    renew_to: str | None = None
    state: RenewalState = field(default_factory=RenewalState)

    def __post_init__(self) -> None:
        try:
            self.state = RenewalState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            self.state = RenewalState()

    def _save(self) -> None:
        atomic_write(self.state_file, json.dumps(self.state.as_json()).encode(), mode=0o600)

    def current(self) -> x509.Certificate | None:
        try:
            chain = x509.load_pem_x509_certificates(self.identity.chain.read_bytes())
        except (OSError, ValueError):
            return None
        return chain[0] if chain else None

    def _issuer_fingerprint(self, leaf: x509.Certificate) -> str | None:
        for ca in self.trust().certificates():
            if ca.subject == leaf.issuer:
                try:
                    leaf.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return fingerprint(ca)
        return None

    def due(self, leaf: x509.Certificate, now: dt.datetime) -> bool:
        if self.state.retry_at is not None and now < self.state.retry_at:
            return False
        if self.renew_to is not None and self._issuer_fingerprint(leaf) not in (
            self.renew_to,
            None,
        ):
            return True  # the site moves to a new CA
        return now >= self._when(leaf)

    def _when(self, leaf: x509.Certificate) -> dt.datetime:
        return renewal_time(
            leaf.not_valid_before_utc,
            leaf.not_valid_after_utc,
            serial=format(leaf.serial_number, "x"),
            renew_at=self.renew_at,
            jitter=self.jitter,
        )

    def _cannot_renew(self, leaf: x509.Certificate) -> str | None:
        if self.state.rejoin is not None and self.state.serial == format(leaf.serial_number, "x"):
            return self.state.rejoin
        return None

    async def tick(self, now: dt.datetime) -> bool:
        """Renew if it is time; True when a new certificate is now in place."""
        leaf = self.current()
        if leaf is None:
            return False
        serial = format(leaf.serial_number, "x")
        if self.state.serial != serial:
            # A new certificate (renewed, or installed by hand): a fresh start.
            self.state.serial = serial
            self.state.failures = 0
            self.state.retry_at = None
            self.state.rejoin = None
            self.state.last_error = None
        self.state.next_renewal_at = self._when(leaf)
        self.state.not_after = leaf.not_valid_after_utc
        if self._cannot_renew(leaf) is not None:
            return False
        # Said at once, not when the renewal comes due: nothing can renew this certificate.
        if now > leaf.not_valid_after_utc or self.trust().revoked(leaf) is not None:
            why = "expired" if now > leaf.not_valid_after_utc else "was revoked"
            self._give_up(f"its certificate (serial {serial}) {why}")
            return False
        if not self.due(leaf, now):
            return False
        self.state.last_attempt_at = now
        try:
            await self._renew(leaf, now)
        except RenewalRefused as exc:
            if exc.rejoin:
                self._give_up(f"the management server refused to renew: {exc.reason}")
            else:
                self._failed(str(exc), now, leaf)
            return False
        except (WatchkeepError, OSError, ValueError) as exc:
            self._failed(str(exc), now, leaf)
            return False
        return True

    async def _renew(self, leaf: x509.Certificate, now: dt.datetime) -> None:
        current_key = load_private_key(self.identity.key)
        new_key = generate_key(key_type_of(leaf.public_key()))
        for attempt in range(MAX_SIGNERS_ASKED):
            try:
                answer = await self.sign(
                    renewal_request(leaf, current_key, new_key, audience=self.audience(), now=now)
                )
                break
            except RenewalRefused as exc:
                # Asked a management server without the CA: the next one, signed for it.
                if not exc.elsewhere or attempt + 1 == MAX_SIGNERS_ASKED:
                    raise
                log.info("%s: %s; asking %s", self.server, exc.reason, self.audience())
        chain = _checked_chain(answer, new_key, leaf, self.trust())
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        # The key first: a server that reloads when its chain changes finds its key there.
        atomic_write_together(
            [
                (self.identity.key, private_key_pem(new_key), 0o600),
                (self.identity.chain, chain_pem, 0o644),
            ]
        )
        new = chain[0]
        self.state.serial = format(new.serial_number, "x")
        self.state.failures = 0
        self.state.retry_at = None
        self.state.last_error = None
        self.state.last_renewed_at = now
        self.state.renewals += 1
        self.state.next_renewal_at = self._when(new)
        self.state.not_after = new.not_valid_after_utc
        self._save()
        log.info(
            "%s: renewed its certificate: serial %s -> %s, new key, not after %s, next renewal %s",
            self.server,
            format(leaf.serial_number, "x"),
            self.state.serial,
            _iso(new.not_valid_after_utc),
            _iso(self.state.next_renewal_at),
        )
        self.on_renewed()

    def _failed(self, error: str, now: dt.datetime, leaf: x509.Certificate) -> None:
        self.state.failures += 1
        delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (self.state.failures - 1))
        self.state.retry_at = now + dt.timedelta(seconds=delay)
        self.state.last_error = error[:500]
        self._save()
        days = (leaf.not_valid_after_utc - now).total_seconds() / 86400
        log.warning(
            "[cert.expiry_warning] %s: renewing its certificate (serial %x) failed, attempt %d; "
            "it expires in %.1f days; next attempt in %.0f s; the certificate in use stays: %s",
            self.server,
            leaf.serial_number,
            self.state.failures,
            days,
            delay,
            error,
        )

    def _give_up(self, why: str) -> None:
        self.state.rejoin = rejoin_command(self.server, self.role, self.host)
        self.state.last_error = why
        self._save()
        log.error(
            "[cert.validity] %s: cannot renew: %s; fix: %s", self.server, why, self.state.rejoin
        )

    def metrics(self) -> str:
        labels = f'server="{self.server}",role="{self.role}"'
        lines = [
            "# HELP watchkeep_certificate_renewal_timestamp_seconds When the server renews its "
            "certificate next (Unix time).",
            "# TYPE watchkeep_certificate_renewal_timestamp_seconds gauge",
        ]
        if self.state.next_renewal_at is not None:
            lines.append(
                f"watchkeep_certificate_renewal_timestamp_seconds{{{labels}}} "
                f"{self.state.next_renewal_at.timestamp():.0f}"
            )
        lines += [
            "# HELP watchkeep_certificate_renewal_failures Failed renewal attempts since the "
            "last success.",
            "# TYPE watchkeep_certificate_renewal_failures gauge",
            f"watchkeep_certificate_renewal_failures{{{labels}}} {self.state.failures}",
            "# HELP watchkeep_certificate_renewals_total Renewals this server made of its "
            "certificate.",
            "# TYPE watchkeep_certificate_renewals_total counter",
            f"watchkeep_certificate_renewals_total{{{labels}}} {self.state.renewals}",
            "# HELP watchkeep_certificate_renewal_ready_status 1 while the certificate can "
            "renew itself, 0 once it must join again.",
            "# TYPE watchkeep_certificate_renewal_ready_status gauge",
            f"watchkeep_certificate_renewal_ready_status{{{labels}}} "
            f"{0 if self.state.rejoin else 1}",
        ]
        return "\n".join(lines) + "\n"


def _checked_chain(
    answer: dict[str, Any], new_key: Any, leaf: x509.Certificate, trust: TrustMaterial
) -> list[x509.Certificate]:
    """The chain the CA answered, taken only if it is for ``new_key`` and the names of
    ``leaf``, and chains to a CA this server trusts."""
    try:
        chain = x509.load_pem_x509_certificates(str(answer["chain"]).encode())
    except (KeyError, ValueError) as exc:
        raise WatchkeepError(f"the renewal answer holds no certificate chain ({exc})") from exc
    new = chain[0]
    mine = new_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = new.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise WatchkeepError("the renewed certificate is not for the key this server made")
    if (san_dns_names(new), san_ip_addresses(new)) != (
        san_dns_names(leaf),
        san_ip_addresses(leaf),
    ):
        raise WatchkeepError("the renewed certificate names other hosts than the one in use")
    for ca in trust.certificates():
        if ca.subject != new.issuer:
            continue
        try:
            new.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return [new, ca]
    raise WatchkeepError(
        f"the renewed certificate's issuer {new.issuer.rfc4514_string()} is not in this "
        "server's trust store (yet)"
    )


CRL_FETCH_BEFORE = dt.timedelta(days=3)  # as the CA re-signs them (pki._rotation)


async def ask_to_sign(
    server: str,
    endpoint: Endpoint,
    request: dict[str, Any],
    *,
    ssl_context: ssl.SSLContext | None,
    trust_dir: str | None = None,
    another: Callable[[], bool],
) -> dict[str, Any]:
    """``server``'s renewal request signed by the management server at ``endpoint``
    (``POST /api/v1/renewals``); its refusals as :class:`RenewalRefused`: ``rejoin`` when
    only a new enrollment helps, ``elsewhere`` when it holds no CA and ``another()`` turned
    to the next management server of the site."""
    async with open_session({endpoint.host: endpoint.address}, timeout=10) as session:
        try:
            answer = await call_json(
                session,
                endpoint,
                "POST",
                "/api/v1/renewals",
                ssl_context=ssl_context,
                body=request,
                trust_dir=trust_dir,
            )
        except ApiError as exc:
            detail = str(exc.document.get("detail"))
            if exc.document.get("rejoin") is True:
                raise RenewalRefused(server, detail, fix="", rejoin=True) from exc
            if exc.document.get("ca_offline") is True and another():
                fix = str(exc.document.get("fix") or "")
                raise RenewalRefused(server, detail, fix=fix, elsewhere=True) from exc
            raise
    if not isinstance(answer, dict):
        raise ConnectionFailed(endpoint.server, "the renewal answer is not a JSON object")
    return answer


def crls_stale(trust: TrustMaterial, now: dt.datetime) -> bool:
    """Whether a CRL of the trust store expires within ``CRL_FETCH_BEFORE`` (or has)."""
    try:
        crls = trust.crls()
    except (OSError, ValueError):
        return True
    return any(
        c.next_update_utc is not None and c.next_update_utc - now < CRL_FETCH_BEFORE for c in crls
    )


def trust_payload(pki: SitePKI) -> dict[str, Any]:
    """What every trust store of the site must hold: the CA bundle, retired CAs, CRLs."""
    from cryptography.hazmat.primitives import serialization

    from watchkeep.pki import fingerprint
    from watchkeep.pki._rotation import (
        refresh_crls,
        renewal_target,
        retired_fingerprints,
        trust_bundle,
    )

    return {
        "cas": [c.public_bytes(serialization.Encoding.PEM).decode() for c in trust_bundle(pki)],
        "retired": retired_fingerprints(pki),
        "crls": [p.decode() for p in refresh_crls(pki)],
        "bundle_fingerprints": [fingerprint(c) for c in trust_bundle(pki)],
        # Set by `ca rotate` once every server trusts the new CA: renew from it now.
        "renew_to": renewal_target(pki),
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
