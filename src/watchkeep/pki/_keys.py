"""Private key files: serialisation, loading and the key.service_account rule."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from watchkeep.errors import CertificateRuleViolation, MalformedPEM, WrongPassphrase
from watchkeep.pki._profiles import PrivateKey

__all__ = ["check_key_file_access", "load_private_key", "private_key_pem", "same_public_key"]


def same_public_key(a: object, b: object) -> bool:
    """True when two public keys are the same key (compared as SubjectPublicKeyInfo)."""

    def spki(key: object) -> bytes:
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            return b""
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    first = spki(a)
    return bool(first) and first == spki(b)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MalformedPEM(str(path), "private key", exc.strerror or str(exc)) from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        raise WrongPassphrase(str(path)) from exc
    except ValueError as exc:
        if b"ENCRYPTED" in data:
            raise WrongPassphrase(str(path)) from exc
        raise MalformedPEM(str(path), "private key", str(exc).split("\n")[0]) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MalformedPEM(str(path), "private key", f"unsupported key type {type(key).__name__}")
    return key


def check_key_file_access(path: Path, service_account: str | None = None) -> None:
    """Enforce key.service_account: the key is readable by its service account and nobody else.

    The owner must be the service account (the current user when none is named) and the
    mode must grant nothing to group or others, like PostgreSQL's rule for its server key.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise CertificateRuleViolation(
            "key.service_account",
            str(path),
            f"cannot read the private key: {exc.strerror or exc}",
            fix=f"check the path, or re-issue: watchkeep cert issue ... --out {path.parent}",
        ) from exc
    if not stat.S_ISREG(st.st_mode):
        raise CertificateRuleViolation(
            "key.service_account", str(path), "the private key is not a regular file"
        )
    if service_account is None:
        expected_uid = os.geteuid()
        account = pwd.getpwuid(expected_uid).pw_name
    else:
        account = service_account
        try:
            expected_uid = pwd.getpwnam(service_account).pw_uid
        except KeyError:
            raise CertificateRuleViolation(
                "key.service_account",
                str(path),
                f"the service account {service_account!r} does not exist",
                fix="create the account or set service_account in the server config",
            ) from None
    if st.st_uid != expected_uid:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        raise CertificateRuleViolation(
            "key.service_account",
            str(path),
            f"the private key is owned by {owner}, not by the service account {account}",
            fix=f"chown {account} {path}",
        )
    if st.st_mode & 0o077:
        raise CertificateRuleViolation(
            "key.service_account",
            str(path),
            f"the private key has mode {stat.S_IMODE(st.st_mode):04o}; "
            "group and others must have no access",
            fix=f"chmod 600 {path}",
        )
    if not st.st_mode & stat.S_IRUSR:
        raise CertificateRuleViolation(
            "key.service_account",
            str(path),
            f"the service account {account} cannot read its own private key",
            fix=f"chmod 600 {path}",
        )
