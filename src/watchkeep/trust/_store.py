"""Trust stores: a directory of hashed CA certificates (and CRLs), and the OS store."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._files import atomic_write
from watchkeep.errors import MalformedPEM, TrustError
from watchkeep.pki import fingerprint
from watchkeep.trust._hash import subject_hash

__all__ = ["DirectoryTrustStore", "SystemTrustStore", "TrustedCertificate", "read_pem_bundle"]

# Debian's update-ca-certificates picks up *.crt files from here.
SYSTEM_ANCHOR_DIR = Path("/usr/local/share/ca-certificates")


def read_pem_bundle(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MalformedPEM(str(path), "CA certificate", exc.strerror or str(exc)) from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise MalformedPEM(str(path), "CA certificate", str(exc).split("\n")[0]) from exc
    for cert in certs:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise MalformedPEM(
                str(path), "CA certificate", f"{cert.subject.rfc4514_string()} is not a CA"
            )
    return certs


@dataclass(frozen=True)
class TrustedCertificate:
    subject: str
    sha256_fingerprint: str
    not_after: dt.datetime
    path: Path

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "sha256_fingerprint": self.sha256_fingerprint,
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "path": str(self.path),
        }


def _file_name(cert: x509.Certificate) -> str:
    return f"watchkeep-{fingerprint(cert)[:16]}.pem"


class DirectoryTrustStore:
    """A directory that OpenSSL reads with -CApath: one PEM per CA plus `<hash>.N` links,
    and the site CRL as `<hash>.rN`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def install(self, cert: x509.Certificate) -> TrustedCertificate:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrustError(
                f"cannot create the trust store {self.path}: {exc.strerror}",
                fix="choose a writable directory with --store DIR",
            ) from exc
        target = self.path / _file_name(cert)
        atomic_write(target, cert.public_bytes(serialization.Encoding.PEM))
        self._link(subject_hash(cert.subject), target.name, suffix="")
        return self._describe(cert, target)

    def install_crl(self, crl_pem: bytes) -> Path:
        try:
            crl = x509.load_pem_x509_crl(crl_pem)
        except ValueError as exc:
            raise MalformedPEM("CRL", "CRL", str(exc).split("\n")[0]) from exc
        # One CRL per issuer, replaced in place: OpenSSL's by-dir lookup reads <hash>.r0.
        target = self.path / f"{subject_hash(crl.issuer)}.r0"
        atomic_write(target, crl_pem)
        return target

    def _link(self, digest: str, target: str, *, suffix: str) -> None:
        for n in range(100):
            link = self.path / f"{digest}.{suffix}{n}"
            if link.is_symlink() and os.readlink(link) == target:
                return
            if not link.exists() and not link.is_symlink():
                tmp = self.path / f".{link.name}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(target)
                tmp.replace(link)
                return
        raise TrustError(f"more than 100 CAs share the subject hash {digest} in {self.path}")

    def entries(self) -> list[TrustedCertificate]:
        if not self.path.is_dir():
            return []
        found = []
        for file in sorted(self.path.glob("watchkeep-*.pem")):
            for cert in read_pem_bundle(file):
                found.append(self._describe(cert, file))
        return found

    def remove(self, fingerprint_prefix: str) -> TrustedCertificate:
        wanted = fingerprint_prefix.replace(":", "").lower()
        matches = [e for e in self.entries() if e.sha256_fingerprint.startswith(wanted)]
        if len(matches) != 1:
            raise TrustError(
                f"{len(matches)} CA certificates in {self.path} match fingerprint {fingerprint_prefix!r}",
                fix=f"watchkeep trust list --store {self.path}, then pass a longer fingerprint",
            )
        entry = matches[0]
        for link in self.path.iterdir():
            if link.is_symlink() and os.readlink(link) == entry.path.name:
                link.unlink()
        entry.path.unlink()
        return entry

    @staticmethod
    def _describe(cert: x509.Certificate, path: Path) -> TrustedCertificate:
        return TrustedCertificate(
            cert.subject.rfc4514_string(), fingerprint(cert), cert.not_valid_after_utc, path
        )


class SystemTrustStore:
    """The Debian OS trust store (update-ca-certificates)."""

    def install(self, cert: x509.Certificate) -> TrustedCertificate:
        tool = shutil.which("update-ca-certificates")
        if tool is None:
            raise TrustError(
                "update-ca-certificates is not installed, so the OS trust store cannot be changed",
                fix="apt-get install ca-certificates, or use --store DIR",
            )
        if os.geteuid() != 0:
            raise TrustError(
                "changing the OS trust store needs root",
                fix="run `sudo watchkeep trust install --system`",
            )
        target = SYSTEM_ANCHOR_DIR / (_file_name(cert).removesuffix(".pem") + ".crt")
        atomic_write(target, cert.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run([tool], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise TrustError(
                f"update-ca-certificates failed: {result.stderr.strip() or result.stdout.strip()}",
                fix="run update-ca-certificates by hand and read its output",
            )
        return DirectoryTrustStore._describe(cert, target)

    def entries(self) -> list[TrustedCertificate]:
        if not SYSTEM_ANCHOR_DIR.is_dir():
            return []
        found = []
        for file in sorted(SYSTEM_ANCHOR_DIR.glob("watchkeep-*.crt")):
            for cert in read_pem_bundle(file):
                found.append(DirectoryTrustStore._describe(cert, file))
        return found
