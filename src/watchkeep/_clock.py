"""Now, in UTC: the two readings of the clock watchkeep takes (pure code takes ``now`` as an
argument instead, so that tests can set it).

A test clock moves "now" for whole processes: with ``WATCHKEEP_TEST_CLOCK=FILE`` in the
environment, every watchkeep process adds the number of seconds written in FILE to the
system clock, re-reading it when it changes, so that a test can let a site live through
years of certificates in seconds. OpenSSL verifies certificates against the system clock,
so the TLS contexts watchkeep makes follow the test clock too (``follow_test_clock``);
without the variable nothing of this runs.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import ssl
import time
import weakref
from pathlib import Path

__all__ = [
    "TEST_CLOCK_ENV",
    "follow_test_clock",
    "set_test_clock",
    "utcnow",
    "utcnow_to_second",
]

TEST_CLOCK_ENV = "WATCHKEEP_TEST_CLOCK"
_REREAD = 0.02  # seconds between looks at the clock file

_offset = dt.timedelta(0)
_stamp: tuple[int, int] | None = None
_looked_at = -1.0
_contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def utcnow() -> dt.datetime:
    """Now, an aware UTC time to the microsecond: heartbeats, tokens, expiry warnings."""
    real = dt.datetime.now(dt.UTC)
    if TEST_CLOCK_ENV not in os.environ:
        return real
    return real + _test_offset()


def utcnow_to_second() -> dt.datetime:
    """Now, cut to the second: the times written into certificates, CRLs and the inventory,
    which X.509 holds to the second, so that a time written and read back compares equal."""
    return utcnow().replace(microsecond=0)


def set_test_clock(path: Path, offset: dt.timedelta) -> None:
    """Move the test clock of every process that reads ``path`` to ``offset`` from now."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(f"{offset.total_seconds():.6f}\n")
    os.replace(staged, path)


def _test_offset() -> dt.timedelta:
    global _offset, _stamp, _looked_at
    monotonic = time.monotonic()
    if monotonic - _looked_at < _REREAD:
        return _offset
    _looked_at = monotonic
    path = os.environ[TEST_CLOCK_ENV]
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != _stamp:
            _offset = dt.timedelta(seconds=float(Path(path).read_text().strip() or 0))
            _stamp = stamp
            for context in list(_contexts):
                _set_verify_time(context)
    except (OSError, ValueError):
        pass  # a missing or half-written file: keep the last reading
    return _offset


def follow_test_clock(context: ssl.SSLContext) -> ssl.SSLContext:
    """Under a test clock, make ``context`` verify certificates at the test clock's time
    (and again each time the clock moves); otherwise leave it alone."""
    if TEST_CLOCK_ENV in os.environ:
        _test_offset()
        _contexts.add(context)
        _set_verify_time(context)
    return context


def _set_verify_time(context: ssl.SSLContext) -> None:
    # Python's ssl module does not expose X509_VERIFY_PARAM_set_time: reach the SSL_CTX
    # the context wraps (the first field after the object header) through the libssl
    # the ssl module itself loaded. A verification time fixed at this moment lags the test
    # clock by the real seconds until it moves again; certificates are back-dated by an
    # hour (pki CLOCK_SKEW), far more than a test runs between two moves.
    libssl = _libssl()
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    param = libssl.SSL_CTX_get0_param(ssl_ctx)
    libssl.X509_VERIFY_PARAM_set_time(param, int((dt.datetime.now(dt.UTC) + _offset).timestamp()))


_loaded: ctypes.CDLL | None = None


def _libssl() -> ctypes.CDLL:
    global _loaded
    if _loaded is None:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        library.SSL_CTX_get0_param.restype = ctypes.c_void_p
        library.SSL_CTX_get0_param.argtypes = [ctypes.c_void_p]
        library.X509_VERIFY_PARAM_set_time.restype = None
        library.X509_VERIFY_PARAM_set_time.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        _loaded = library
    return _loaded
