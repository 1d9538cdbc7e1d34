"""Parsing and validation of host names, IP addresses and durations (pure)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

from watchkeep.errors import InvalidDuration, InvalidHostName, UsageError

__all__ = ["format_duration", "parse_duration", "parse_ip", "validate_host_name"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Ten digits: every duration up to the 100-year limit can be written in seconds.
_DURATION = re.compile(r"(\d{1,10})([smhdw]?)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}
_MAX_DURATION = dt.timedelta(days=100 * 366)


def validate_host_name(text: str) -> str:
    """Return the canonical (lower-case, no trailing dot) form of a DNS host name.

    Rules of RFC 1123 as certificates need them: letters, digits and hyphens; labels of
    1-63 characters that neither start nor end with a hyphen; 253 characters at most; no
    wildcard, no underscore, and not all-numeric (that is an IP address: use --ip).
    """
    host = text.strip()
    if host != text:
        raise InvalidHostName(text, "it has surrounding spaces")
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if not host:
        raise InvalidHostName(text, "it is empty")
    if not host.isascii():
        raise InvalidHostName(text, "it has non-ASCII characters (write IDNs in xn-- form)")
    host = host.lower()
    if len(host) > 253:
        raise InvalidHostName(text, f"it is {len(host)} characters long, over the limit of 253")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise InvalidHostName(
                text, "it has an empty label (two dots in a row or a leading dot)"
            )
        if len(label) > 63:
            raise InvalidHostName(
                text, f"label {label[:20]}... is {len(label)} characters, over 63"
            )
        if "*" in label:
            raise InvalidHostName(text, "wildcards are not allowed in server certificates")
        if "_" in label:
            raise InvalidHostName(text, "underscores are not allowed in host names")
        if not _LABEL.fullmatch(label):
            raise InvalidHostName(
                text, f"label {label!r} must be letters, digits and inner hyphens only"
            )
    if all(label.isdigit() for label in labels):
        raise InvalidHostName(text, "it looks like an IP address; pass it with --ip")
    return host


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise UsageError(
            f"invalid IP address {text!r}", fix="pass an IPv4 or IPv6 address, e.g. --ip 127.0.0.2"
        ) from exc


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``90d``, ``12h``, ``30m``, ``45s``, ``2w``; a bare number is days."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise InvalidDuration(text, "expected a number followed by s, m, h, d or w")
    value = int(match.group(1))
    if value == 0:
        raise InvalidDuration(text, "it must be greater than zero")
    seconds = value * _UNIT_SECONDS[match.group(2)]
    # Compared as integers: a timedelta of a billion weeks would overflow before the check.
    if seconds > _MAX_DURATION.total_seconds():
        raise InvalidDuration(text, "it is longer than 100 years")
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
