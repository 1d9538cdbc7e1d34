"""CA rotation: a new CA beside the old one, both trusted until the old one is retired.

The steps, each safe on its own:

1. ``rotate``: the current CA moves to ``ca/archive/<fingerprint>/`` (certificate, key,
   CRL) and a new CA takes its place. Both stay in the site's trust bundle.
2. Every trust store receives the bundle (the management server hands it out on the
   encrypted management link; ``watchkeep trust install`` does it by hand).
3. Every server certificate is re-issued by the new CA (``watchkeep cert renew --all``).
4. ``retire``: once no active certificate comes from the old CA, it leaves the bundle.

The CRLs of every CA still in the bundle are kept fresh (re-signed before they expire),
because a peer that checks revocation refuses a certificate whose issuer has no valid CRL.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._clock import utcnow_to_second
from watchkeep._files import atomic_write
from watchkeep.errors import UsageError
from watchkeep.pki._authority import CertificateAuthority, fingerprint
from watchkeep.pki._keys import load_private_key
from watchkeep.pki._profiles import KeyType
from watchkeep.pki._service import SitePKI, load_certificate

__all__ = [
    "announce_renewals",
    "archived_authorities",
    "refresh_crls",
    "renewal_target",
    "retire_ca",
    "retired_fingerprints",
    "rotate_ca",
    "trust_bundle",
]

CRL_REFRESH_AGE = dt.timedelta(days=1)


def _archive_root(pki: SitePKI) -> Path:
    return pki.home.ca_dir / "archive"


def archived_authorities(pki: SitePKI) -> list[Path]:
    """Directories of earlier CAs that are still trusted (not retired)."""
    root = _archive_root(pki)
    if not root.is_dir():
        return []
    return sorted(
        d for d in root.iterdir() if (d / "ca.pem").exists() and not (d / "retired").exists()
    )


def retired_fingerprints(pki: SitePKI) -> list[str]:
    root = _archive_root(pki)
    if not root.is_dir():
        return []
    return sorted(
        fingerprint(load_certificate(d / "ca.pem"))
        for d in root.iterdir()
        if (d / "retired").exists() and (d / "ca.pem").exists()
    )


def rotate_ca(
    pki: SitePKI,
    *,
    name: str | None = None,
    key_type: KeyType | None = None,
    days: int = 3652,
    now: dt.datetime | None = None,
) -> tuple[CertificateAuthority, CertificateAuthority]:
    """Archive the current CA and create its successor; returns (old, new)."""
    now = now or utcnow_to_second()
    old = pki.authority()
    archive = _archive_root(pki) / old.fingerprint[:16]
    if archive.exists() and (archive / "ca.pem").exists():
        raise UsageError(
            f"the CA {old.fingerprint[:16]} is already archived", fix="inspect ca/archive"
        )
    atomic_write(archive / "ca.key", pki.home.ca_key.read_bytes(), mode=0o600)
    if pki.home.crl.exists():
        atomic_write(archive / "crl.pem", pki.home.crl.read_bytes())
    atomic_write(archive / "ca.pem", pki.home.ca_cert.read_bytes())
    new_name = name or f"{old.name} {now:%Y-%m}"
    if new_name == old.name:
        raise UsageError("the new CA needs a name different from the old one", fix="pass --name")
    new = CertificateAuthority.create(
        new_name,
        key_type=key_type or KeyType.parse(_key_type_name(old)),
        days=days,
        now=now,
    )
    # Key first, certificate last (as in ca init): ca.pem names the CA in use.
    atomic_write(pki.home.ca_key, new.private_key_pem(pki.passphrase), mode=0o600)
    pki._authority = new
    pki._write_crl(new, now)
    atomic_write(pki.home.ca_cert, new.certificate.public_bytes(serialization.Encoding.PEM))
    return old, new


def announce_renewals(pki: SitePKI) -> str:
    """Ask every server to renew from the current CA now (step 3 of a rotation, once every
    trust store holds it): the management server hands this on with the trust bundle."""
    current = fingerprint(pki.ca_certificate())
    atomic_write(pki.home.ca_dir / "renew-to", current.encode() + b"\n")
    return current


def renewal_target(pki: SitePKI) -> str | None:
    """The CA servers are asked to renew from, while it is the current one."""
    try:
        announced = (pki.home.ca_dir / "renew-to").read_text().strip()
    except OSError:
        return None
    return announced if announced == fingerprint(pki.ca_certificate()) else None


def _key_type_name(ca: CertificateAuthority) -> str:
    from watchkeep.pki._profiles import key_type_of

    return key_type_of(ca.certificate.public_key()).value


def trust_bundle(pki: SitePKI) -> list[x509.Certificate]:
    """The CAs every party must trust now: the current one and those not yet retired."""
    return [pki.ca_certificate()] + [
        load_certificate(d / "ca.pem", "archived CA certificate") for d in archived_authorities(pki)
    ]


def refresh_crls(pki: SitePKI, now: dt.datetime | None = None) -> list[bytes]:
    """Fresh CRLs of every trusted CA (re-signed when older than a day), as PEM."""
    now = now or utcnow_to_second()
    pems = []
    if _stale(pki.home.crl, now):
        pki.write_crl(now)
    pems.append(pki.home.crl.read_bytes())
    for directory in archived_authorities(pki):
        crl_path = directory / "crl.pem"
        cert = load_certificate(directory / "ca.pem", "archived CA certificate")
        entries = pki.revoked_entries(fingerprint(cert), now)
        # Re-signed when old, and at once when a certificate of the old CA was revoked.
        if _stale(crl_path, now) or _listed(crl_path) != {e.serial for e in entries}:
            ca = CertificateAuthority(cert, load_private_key(directory / "ca.key", pki.passphrase))
            crl = ca.sign_crl(entries, now=now, number=int(now.timestamp() * 1000))
            atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM))
        pems.append(crl_path.read_bytes())
    return pems


def _listed(path: Path) -> set[int]:
    try:
        return {r.serial_number for r in x509.load_pem_x509_crl(path.read_bytes())}
    except (OSError, ValueError):
        return set()


def _stale(path: Path, now: dt.datetime) -> bool:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return True
    return now - crl.last_update_utc > CRL_REFRESH_AGE or (
        crl.next_update_utc is not None and crl.next_update_utc - now < CRL_REFRESH_AGE * 3
    )


def retire_ca(pki: SitePKI, fingerprint_prefix: str) -> Path:
    """Stop trusting an archived CA; refused while an active certificate comes from it."""
    wanted = fingerprint_prefix.replace(":", "").lower()
    if pki.ca_certificate() and fingerprint(pki.ca_certificate()).startswith(wanted):
        raise UsageError(
            "that is the current CA; it cannot be retired", fix="rotate first: watchkeep ca rotate"
        )
    matches = [
        d
        for d in archived_authorities(pki)
        if fingerprint(load_certificate(d / "ca.pem")).startswith(wanted)
    ]
    if len(matches) != 1:
        raise UsageError(
            f"{len(matches)} archived CAs match {fingerprint_prefix!r}",
            fix="watchkeep ca show --json lists the trusted CAs with their fingerprints",
        )
    directory = matches[0]
    full = fingerprint(load_certificate(directory / "ca.pem"))
    still = [r.name for r in pki.inventory.active() if r.issuer_fingerprint == full]
    if still:
        raise UsageError(
            f"{len(still)} active certificate(s) still come from this CA: {', '.join(still[:5])}",
            fix="re-issue them from the new CA first: watchkeep cert renew --all",
        )
    (directory / "retired").write_text(utcnow_to_second().isoformat() + "\n")
    # The key of a retired CA signs nothing any more.
    shutil.move(str(directory / "ca.key"), str(directory / "ca.key.retired"))
    (directory / "ca.key.retired").chmod(0o600)
    return directory
