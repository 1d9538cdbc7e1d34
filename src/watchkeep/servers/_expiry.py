"""Every server watches the certificates it depends on (its own and its CAs): it logs each
warning threshold once as it is crossed, and exposes them as Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from watchkeep.pki._lifecycle import DEFAULT_WARN_DAYS, crossed_thresholds, warning_level

__all__ = ["ExpiryWatch", "WatchedCertificate", "inventory_certificates", "metrics_text"]

log = logging.getLogger("watchkeep.expiry")


@dataclass(frozen=True)
class WatchedCertificate:
    # "server" (its own), "ca", or "issued": an active certificate of the CA's inventory,
    # watched by the management server that holds the CA (``server`` is its inventory name)
    kind: str
    server: str
    role: str
    host: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(
        cls, cert: x509.Certificate, *, kind: str, server: str, role: str, host: str
    ) -> WatchedCertificate:
        return cls(
            kind,
            server,
            role,
            host,
            format(cert.serial_number, "x"),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )


class ExpiryWatch:
    """Announces each crossed threshold once per certificate (kept across restarts by the
    caller through ``announced``)."""

    def __init__(
        self,
        thresholds: Sequence[int] = DEFAULT_WARN_DAYS,
        announced: dict[str, list[int]] | None = None,
    ) -> None:
        self.thresholds = tuple(thresholds)
        self.announced: dict[str, list[int]] = dict(announced or {})

    def check(
        self,
        certificates: Iterable[WatchedCertificate],
        now: dt.datetime,
        *,
        own_fix: str | None = None,
    ) -> list[str]:
        """Log (at WARNING, ERROR once expired) what is newly crossed; return the lines.

        ``own_fix``: what renews the server's own certificate when that is not the CA's
        command (a server that joined renews itself from the management server; the
        command to run is then not on its machine)."""
        lines = []
        for cert in certificates:
            key = f"{cert.kind}:{cert.serial}"
            for threshold in crossed_thresholds(
                cert.not_after, now, self.announced.get(key, []), self.thresholds
            ):
                self.announced.setdefault(key, []).append(threshold)
                what = "the CA certificate" if cert.kind == "ca" else "its certificate"
                fix = (
                    f"watchkeep cert renew {cert.server} (and install the new files where "
                    "it is used)"
                    if cert.kind == "issued"
                    else own_fix
                    if cert.kind == "server"
                    else None
                )
                if threshold == 0:
                    line = (
                        f"[cert.validity] {cert.server}: {what} (serial {cert.serial}, {cert.host}) "
                        f"EXPIRED on {cert.not_after:%Y-%m-%d %H:%M} UTC; every peer refuses it now; "
                        f"fix: {fix or 'watchkeep cert renew --all --within 1d'}"
                    )
                    log.error("%s", line)
                else:
                    days = (cert.not_after - now).total_seconds() / 86400
                    line = (
                        f"[cert.expiry_warning] {cert.server}: {what} (serial {cert.serial}, {cert.host}) "
                        f"expires in {days:.1f} days, on {cert.not_after:%Y-%m-%d} (under {threshold} days); "
                        f"fix: {fix or f'watchkeep cert renew --all --within {threshold}d'}"
                    )
                    log.warning("%s", line)
                lines.append(line)
        return lines

    def level(self, cert: WatchedCertificate, now: dt.datetime) -> int | None:
        return warning_level(cert.not_after, now, self.thresholds)


def inventory_certificates(ca_home: Path) -> list[WatchedCertificate]:
    """Every active certificate the CA issued, for any role: those exported for machines
    watchkeep does not run (an event server, an integration, a client's PKCS#12) expire
    too, and only the CA's inventory knows of them."""
    from watchkeep._home import Home
    from watchkeep.errors import WatchkeepError
    from watchkeep.pki import SitePKI

    try:
        records = SitePKI(Home(ca_home)).certificates()
    except (WatchkeepError, OSError, ValueError) as exc:
        log.warning(
            "cannot read the CA's inventory in %s to watch its certificates: %s", ca_home, exc
        )
        return []
    return [
        WatchedCertificate(
            "issued",
            r.name,
            r.role,
            (r.hosts or r.ips or ("",))[0],
            r.serial,
            r.not_before,
            r.not_after,
        )
        for r in records
    ]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(
    certificates: Iterable[WatchedCertificate], now: dt.datetime, extra: str = ""
) -> str:
    """Prometheus text exposition of the certificates' expiry."""
    certs = list(certificates)
    out = [
        "# HELP watchkeep_certificate_not_after_timestamp_seconds When the certificate expires (Unix time).",
        "# TYPE watchkeep_certificate_not_after_timestamp_seconds gauge",
    ]
    rows = []
    for c in certs:
        labels = (
            f'server="{_label(c.server)}",role="{_label(c.role)}",host="{_label(c.host)}",'
            f'serial="{_label(c.serial)}",kind="{c.kind}"'
        )
        rows.append((labels, c))
        out.append(
            f"watchkeep_certificate_not_after_timestamp_seconds{{{labels}}} {c.not_after.timestamp():.0f}"
        )
    out += [
        "# HELP watchkeep_certificate_days_left Days until the certificate expires (negative once expired).",
        "# TYPE watchkeep_certificate_days_left gauge",
    ]
    for labels, c in rows:
        out.append(
            f"watchkeep_certificate_days_left{{{labels}}} {(c.not_after - now).total_seconds() / 86400:.3f}"
        )
    out += [
        "# HELP watchkeep_certificate_not_before_timestamp_seconds When the certificate became valid (Unix time).",
        "# TYPE watchkeep_certificate_not_before_timestamp_seconds gauge",
    ]
    for labels, c in rows:
        out.append(
            f"watchkeep_certificate_not_before_timestamp_seconds{{{labels}}} {c.not_before.timestamp():.0f}"
        )
    return "\n".join(out) + "\n" + extra
