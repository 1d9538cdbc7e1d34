"""Trusting the site CA on a new machine by its fingerprint (as `step ca bootstrap` does).

The CA certificates are fetched from the management server (``GET /api/v1/ca``, on its
API or its publish listener) without verifying the connection: nothing on this machine
could verify it yet. What makes the answer trustworthy is the SHA-256 fingerprint the
administrator copied from `watchkeep ca show` on the CA's machine: only the certificate
with exactly that fingerprint is taken, and when none has it nothing is written.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from cryptography import x509

from watchkeep.errors import ConnectionFailed, TrustError, UsageError
from watchkeep.pki import fingerprint

__all__ = ["CA_PATH", "fetch_ca_by_fingerprint", "normalise_fingerprint"]

CA_PATH = "/api/v1/ca"
MAX_BUNDLE = 1 << 20  # a bundle of a few CA certificates; more is not a CA bundle
TIMEOUT = 15.0


def normalise_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as `ca show` prints it: 64 hex digits (colons and case free)."""
    value = text.replace(":", "").strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(
            f"--fingerprint {text!r} is not a SHA-256 fingerprint (64 hex digits)",
            fix="copy the fingerprint `watchkeep ca show` prints on the CA's machine",
        )
    return value


def _bundle_url(source: str) -> str:
    parts = urlsplit(source.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(
            f"--from {source!r} is not an https:// or http:// URL",
            fix="name the management server's API, e.g. --from https://ms.site.example:9000",
        )
    path = parts.path.rstrip("/")
    if not path.endswith(CA_PATH):
        path += CA_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def fetch_ca_by_fingerprint(
    source: str, expected: str, *, timeout: float = TIMEOUT
) -> x509.Certificate:
    """The CA certificate with SHA-256 fingerprint ``expected`` among those ``source``
    serves; refused (TrustError, naming every fingerprint served) when none matches."""
    wanted = normalise_fingerprint(expected)
    url = _bundle_url(source)
    # Unverified on purpose: the fingerprint is the check (see the module's docstring).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    fix = f"check that the management server runs and that {source} is its API address"
    # Straight to the server, as every other watchkeep client connects: no proxy from the
    # environment stands between (the management server is on the site's own network).
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as answer:
            data = answer.read(MAX_BUNDLE + 1)
    except urllib.error.HTTPError as exc:
        raise ConnectionFailed(
            url, f"it answered HTTP {exc.code} instead of the CA bundle", fix=fix
        ) from exc
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConnectionFailed(url, str(reason), fix=fix) from exc
    try:
        served = x509.load_pem_x509_certificates(data) if len(data) <= MAX_BUNDLE else []
    except ValueError:
        served = []
    if not served:
        raise ConnectionFailed(url, "its answer holds no PEM certificate", fix=fix)
    for cert in served:
        if fingerprint(cert) == wanted:
            return cert
    raise TrustError(
        f"refused the CA served by {url}: its SHA-256 fingerprint is "
        f"{', '.join(fingerprint(c) for c in served)}, not the expected {wanted}; "
        "nothing was installed",
        fix="compare with the fingerprint `watchkeep ca show` prints on the CA's machine; if "
        "that is the one you passed, something between here and the server answers in its "
        "place: do not trust it",
    )
