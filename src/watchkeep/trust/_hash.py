"""OpenSSL's subject-name hash, so that `openssl verify -CApath` and `curl --capath` find
our trust-store entries without running `openssl rehash`."""

from __future__ import annotations

import hashlib
import re
import warnings

from cryptography import x509
from cryptography.x509.name import _ASN1Type

__all__ = ["subject_hash"]

# OpenSSL's ossl_isspace(): ASCII space, tab, LF, VT, FF and CR only. Python's \s and
# str.strip() also take U+00A0, U+001C..U+001F and other Unicode spaces, which OpenSSL keeps.
_ASCII_SPACE = " \t\n\v\f\r"
_SPACES = re.compile(f"[{re.escape(_ASCII_SPACE)}]+")


def _canonical_value(value: str) -> str:
    # OpenSSL's x509_name_canon: trim, collapse inner whitespace, fold ASCII to lower case.
    text = _SPACES.sub(" ", value.strip(_ASCII_SPACE))
    return "".join(c.lower() if c.isascii() else c for c in text)


def subject_hash(name: x509.Name) -> str:
    """The 8-hex-digit hash OpenSSL names `<hash>.0` files by (X509_NAME_hash_ex)."""
    rdns = []
    for rdn in name.rdns:
        attrs: list[x509.NameAttribute[str | bytes]] = []
        for attr in rdn:
            value = attr.value
            if isinstance(value, str):
                # A value of spaces only canonicalises to "", which OpenSSL hashes but
                # cryptography's length check for some attributes (CN: 1-64) would refuse.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    canonical = x509.NameAttribute(
                        attr.oid, _canonical_value(value), _ASN1Type.UTF8String, _validate=False
                    )
                attrs.append(canonical)
            else:
                attrs.append(attr)
        rdns.append(x509.RelativeDistinguishedName(attrs))
    der = x509.Name(rdns).public_bytes()
    # Drop the outer SEQUENCE header: the canonical form is the RDN SETs concatenated.
    length = der[1]
    body = der[2 + (length & 0x7F) :] if length & 0x80 else der[2:]
    digest = hashlib.sha1(body, usedforsecurity=False).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"
