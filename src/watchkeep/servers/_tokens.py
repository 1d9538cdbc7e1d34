"""Access tokens: issued by the management server, verified offline by the others.

A token is a JSON Web Token (RFC 7519) signed with the management server's Ed25519 key.
Following RFC 8725 (JWT best current practice), every verifier accepts exactly one
algorithm (EdDSA), checks the token's explicit type, and checks its audience: a token names
the servers that may accept it and is refused by every other one, so a token captured where
it was presented is worthless anywhere else. Tokens are decoded strictly: each part must be
canonical base64url with nothing added (padding, line breaks and junk are refused, not
skipped), so one token has one spelling.

Three kinds, each with the narrowest rights for its purpose (header ``typ``
``watchkeep-KIND+jwt``, claim ``scope`` KIND):

``user``
    What a log-in returns: the user's role and cameras. Its audience is the management
    server, and the mobile server that relayed the log-in (which saw the password anyway).
    Recording servers refuse it.
``stream``
    Video from one recording server: its audience is that server alone, it names the
    cameras it opens and carries no role. The management server issues it to a logged-in
    user for a camera the user may view (``POST /api/v1/cameras/NAME/stream-token``),
    and to itself for the snapshots it fetches on a user's behalf. It carries its user
    (``sub``) and session (``sid``: the jti of the user token it came from), so that a
    revocation of either reaches it.
``control``
    A configuration push from the management server to one recording server (audience:
    that server). It carries the digest of the configuration it pushes (``body``:
    :func:`config_digest`), and the server takes no other with it: a token read off a
    plaintext control link pushes nothing but what it was made for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from watchkeep._files import atomic_write
from watchkeep.errors import InvalidToken, WatchkeepError
from watchkeep.servers._signed import canonical_body

__all__ = [
    "SCOPES",
    "InvalidToken",
    "Revocations",
    "Scope",
    "TokenSigner",
    "TokenVerifier",
    "config_digest",
    "may_view",
]


Scope = Literal["user", "stream", "control"]
SCOPES: tuple[Scope, ...] = ("user", "stream", "control")
ALGORITHM = "EdDSA"
# Three parts of base64url, nothing else: no padding, no whitespace, no other character.
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Claims every token has; a token without one is refused, whatever its signature.
_REQUIRED = ["sub", "aud", "exp", "iat", "jti", "scope"]


def may_view(claims: Mapping[str, Any], camera: str) -> bool:
    """Whether a token's claims open ``camera``: its ``cameras`` list, or every camera where
    it has none (``"*"``)."""
    allowed = claims.get("cameras", "*")
    return allowed == "*" or camera in allowed


def token_type(scope: str) -> str:
    """The ``typ`` header of a token of ``scope``."""
    return f"watchkeep-{scope}+jwt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _canonical(part: str) -> bool:
    """Whether ``part`` is base64url exactly as it encodes its bytes (unpadded; no unused
    bits set in the last character): other spellings of the same bytes are refused."""
    if len(part) % 4 == 1:
        return False
    try:
        return _b64(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) == part
    except (binascii.Error, ValueError):
        return False


class TokenSigner:
    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load_or_create(cls, path: Path) -> TokenSigner:
        if path.exists():
            return cls.from_pem(path.read_bytes(), source=str(path))
        signer = cls(ed25519.Ed25519PrivateKey.generate())
        atomic_write(path, signer.private_pem().encode(), mode=0o600)
        return signer

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str = "the site database") -> TokenSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise WatchkeepError(
                f"{source} holds no Ed25519 token key", fix=f"remove it from {source}"
            )
        return cls(key)

    def private_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def public_key_b64(self) -> str:
        return _b64(
            self.key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def issue(
        self,
        subject: str,
        scope: Scope,
        audience: str | Iterable[str],
        ttl: float,
        *,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A token of ``scope`` for ``subject``, accepted only by the servers named in
        ``audience``, for ``ttl`` seconds."""
        audiences = [audience] if isinstance(audience, str) else sorted(set(audience))
        if not audiences or not all(audiences):
            raise ValueError("a token must name the servers that may accept it")
        now = time.time() if now is None else now
        payload = {
            **claims,
            "sub": subject,
            "scope": scope,
            "aud": audiences,
            "iat": int(now),
            # iat to the microsecond: a revocation at one moment must not refuse a token
            # issued a moment later in the same second (see Revocations.why).
            "issued": round(now, 6),
            "exp": int(now + ttl),
            "jti": secrets.token_hex(16),
        }
        return jwt.encode(
            payload, self.key, algorithm=ALGORITHM, headers={"typ": token_type(scope)}
        )


def config_digest(config: Any) -> str:
    """What a control token binds of the configuration it pushes (its ``body`` claim): the
    SHA-256 of its canonical JSON, the same on both sides whatever spacing went between."""
    return hashlib.sha256(canonical_body(config)).hexdigest()


@dataclass(frozen=True)
class TokenVerifier:
    public_key: ed25519.Ed25519PublicKey

    @classmethod
    def from_b64(cls, text: str) -> TokenVerifier:
        if not _canonical(text):
            raise ValueError("the token key is not canonical base64url")
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(text + "=")))

    def verify(
        self,
        token: str,
        *,
        scope: Scope,
        audience: str,
        now: float | None = None,
        revoked: Revocations | None = None,
    ) -> dict[str, Any]:
        """The claims of ``token``, if the management server signed it for ``scope`` and for
        the server ``audience``, and it is still good (not expired, not ``revoked``)."""
        now = time.time() if now is None else now
        if not _SHAPE.fullmatch(token) or not all(_canonical(p) for p in token.split(".")):
            raise InvalidToken("the token is malformed", fix="log in again")
        try:
            decoded = jwt.decode_complete(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                audience=audience,
                # Expiry is checked below on the caller's clock; iat may be a moment ahead
                # of a verifier whose clock runs a little behind the management server's.
                options={"require": _REQUIRED, "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken(
                "the token's signature does not verify (forged, or from another site)",
                fix="log in to this site's management server",
            ) from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(
                f"the token is not for {audience} (a token is accepted only by the servers "
                "it names)",
                fix=f"ask the management server for a token for {audience}",
            ) from None
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is malformed", fix="log in again") from None
        claims: dict[str, Any] = decoded["payload"]
        if decoded["header"].get("typ") != token_type(scope) or claims.get("scope") != scope:
            raise InvalidToken(
                f"the token is for {claims.get('scope')!r}, not {scope!r}",
                fix="use a token issued for this purpose",
            )
        if not isinstance(claims["exp"], int | float) or claims["exp"] < now:
            raise InvalidToken("the token has expired", fix="log in again")
        why = (revoked or Revocations()).why(claims) if scope != "control" else None
        if why is not None:
            raise InvalidToken(f"the token was revoked: {why}", fix="log in again")
        return claims


@dataclass(frozen=True)
class Revocations:
    """User tokens (and the stream tokens made from them) the management server has revoked
    before they expire.

    ``users``: user -> the moment before which every token of that user is refused (a new
    password or new rights, or the user removed). ``tokens``: a user token's jti -> its
    expiry (one session logged out: that token, and the stream tokens whose ``sid`` it is).
    Both kept only while they can still refuse a token.
    """

    users: Mapping[str, float] = field(default_factory=dict)
    tokens: Mapping[str, float] = field(default_factory=dict)

    def why(self, claims: Mapping[str, Any]) -> str | None:
        """Why a token with ``claims`` is refused, or None when it is not revoked."""
        if str(claims.get("jti")) in self.tokens or str(claims.get("sid")) in self.tokens:
            return "its session was logged out"
        cut = self.users.get(str(claims.get("sub")))
        if cut is not None and _issued(claims) < cut:
            return "its user was removed, or given a new password or new rights"
        return None

    def as_json(self) -> dict[str, dict[str, float]]:
        return {"users": dict(self.users), "tokens": dict(self.tokens)}

    @classmethod
    def from_json(cls, value: Any) -> Revocations:
        """What a configuration (or a saved state) says; anything malformed is left out."""
        if not isinstance(value, dict):
            return cls()
        return cls(_moments(value.get("users")), _moments(value.get("tokens")))

    def with_user(self, user: str, now: float) -> Revocations:
        """Also every token issued to ``user`` before ``now``."""
        return Revocations({**self.users, user: now}, self.tokens)

    def with_session(self, claims: Mapping[str, Any], now: float, *, limit: int) -> Revocations:
        """Also the one token with ``claims`` (a session logged out). Past ``limit``
        sessions, the user's every token until ``now`` is revoked instead: the list stays
        bounded, and only the user who logs out that often loses its other sessions."""
        if len(self.tokens) >= limit:
            return self.with_user(str(claims.get("sub")), now)
        expires = claims.get("exp")
        expiry = float(expires) if isinstance(expires, int | float) else now
        return Revocations(self.users, {**self.tokens, str(claims.get("jti")): expiry})

    def pruned(self, users_after: float, tokens_after: float) -> Revocations:
        """Without what can no longer refuse a token."""
        return Revocations(
            {u: t for u, t in self.users.items() if t > users_after},
            {j: t for j, t in self.tokens.items() if t > tokens_after},
        )


def _moments(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {
        str(key): float(moment)
        for key, moment in value.items()
        if isinstance(moment, int | float) and not isinstance(moment, bool)
    }


def _issued(claims: Mapping[str, Any]) -> float:
    """When a token was issued (its iat, whole seconds, for tokens from before "issued")."""
    try:
        return float(claims.get("issued", claims.get("iat", 0)))
    except (TypeError, ValueError):
        return 0.0
