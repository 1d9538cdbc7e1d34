"""The TLS policy (tls.policy): Mozilla "intermediate" by default, "modern" by choice."""

from __future__ import annotations

import _ssl
import ctypes
import enum
import ssl

from watchkeep.errors import InvalidChoice

__all__ = ["GROUPS", "INTERMEDIATE_CIPHERS", "TlsPolicy", "apply_policy"]

# Mozilla Server Side TLS, intermediate: TLS 1.2 suites are ECDHE with AEAD only.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
GROUPS = b"X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92


class TlsPolicy(enum.StrEnum):
    INTERMEDIATE = "intermediate"
    MODERN = "modern"

    @classmethod
    def parse(cls, text: str) -> TlsPolicy:
        try:
            return cls(text)
        except ValueError:
            raise InvalidChoice("TLS policy", text, [p.value for p in cls]) from None


def apply_policy(context: ssl.SSLContext, policy: TlsPolicy) -> None:
    """Restrict ``context`` to ``policy``: versions, suites, groups, no compression or
    client-initiated renegotiation."""
    if policy is TlsPolicy.MODERN:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _restrict_groups(context)


def _restrict_groups(context: ssl.SSLContext) -> None:
    # OpenSSL 3.0 offers secp521r1 and X448 too, which Mozilla's configurations exclude.
    # Python before 3.13 can set only one group (set_ecdh_curve), so reach the SSL_CTX
    # directly and set the list; the pointer is checked against the options Python sees.
    lib = _libssl()
    if lib is not None:
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if (
            pointer
            and lib.SSL_CTX_get_options(pointer) == context.options
            and lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS) == 1
        ):
            return
    context.set_ecdh_curve("prime256v1")


_LIB: ctypes.CDLL | bool | None = False


def _libssl() -> ctypes.CDLL | None:
    global _LIB
    if _LIB is False:
        try:
            lib = ctypes.CDLL(_ssl.__file__)
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_long,
                ctypes.c_char_p,
            ]
            _LIB = lib
        except (OSError, AttributeError):
            _LIB = None
    return _LIB if isinstance(_LIB, ctypes.CDLL) else None
