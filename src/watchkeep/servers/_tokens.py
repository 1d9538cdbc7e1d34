"""Access tokens: issued by the management server, verified offline by the others.

A token is ``base64url(JSON claims) "." base64url(Ed25519 signature)``. Recording servers
learn the management server's public key when they register, over the (mutually
authenticated, when encrypted) management link, and need nothing else to check a token.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from watchkeep._files import atomic_write
from watchkeep.errors import WatchkeepError

__all__ = ["InvalidToken", "Revocations", "TokenSigner", "TokenVerifier"]


class InvalidToken(WatchkeepError):
    """A token is missing, malformed, forged, expired or for another purpose."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load_or_create(cls, path: Path) -> TokenSigner:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise WatchkeepError(f"{path} is not an Ed25519 token key", fix=f"remove {path}")
            return cls(key)
        key = ed25519.Ed25519PrivateKey.generate()
        atomic_write(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        return cls(key)

    def public_key_b64(self) -> str:
        return _b64(
            self.key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def issue(self, subject: str, role: str, scope: str, ttl: float, **claims: Any) -> str:
        now = time.time()
        payload = {
            "sub": subject,
            "role": role,
            "scope": scope,
            "iat": int(now),
            # iat to the microsecond: a revocation at one moment must not refuse a token
            # issued a moment later in the same second (see TokenVerifier.verify).
            "issued": round(now, 6),
            "exp": int(now + ttl),
            "jti": secrets.token_hex(8),
            **claims,
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self.key.sign(body.encode()))}"


@dataclass(frozen=True)
class TokenVerifier:
    public_key: ed25519.Ed25519PublicKey

    @classmethod
    def from_b64(cls, text: str) -> TokenVerifier:
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(_unb64(text)))

    def verify(
        self,
        token: str,
        *,
        scope: str,
        now: float | None = None,
        revoked: Revocations | None = None,
    ) -> dict[str, Any]:
        """The claims of ``token``, if the management server signed it for ``scope`` and it
        is still good (for a user token: not ``revoked``)."""
        now = time.time() if now is None else now
        body, _, signature = token.partition(".")
        if not body or not signature:
            raise InvalidToken("the token is malformed", fix="log in again")
        try:
            self.public_key.verify(_unb64(signature), body.encode())
        except (InvalidSignature, ValueError):
            raise InvalidToken(
                "the token's signature does not verify (forged, or from another site)",
                fix="log in to this site's management server",
            ) from None
        try:
            claims: dict[str, Any] = json.loads(_unb64(body))
        except ValueError:
            raise InvalidToken("the token is malformed", fix="log in again") from None
        if float(claims.get("exp", 0)) < now:
            raise InvalidToken("the token has expired", fix="log in again")
        if claims.get("scope") != scope:
            raise InvalidToken(
                f"the token is for {claims.get('scope')!r}, not {scope!r}",
                fix="use a token issued for this purpose",
            )
        why = (revoked or Revocations()).why(claims) if scope == "user" else None
        if why is not None:
            raise InvalidToken(f"the token was revoked: {why}", fix="log in again")
        return claims


@dataclass(frozen=True)
class Revocations:
    """User tokens the management server has revoked before they expire.

    ``users``: user -> the moment before which every token of that user is refused (a new
    password or new rights, or the user removed). ``tokens``: a token's jti -> its expiry
    (one session logged out). Both kept only while they can still refuse a token.
    """

    users: Mapping[str, float] = field(default_factory=dict)
    tokens: Mapping[str, float] = field(default_factory=dict)

    def why(self, claims: Mapping[str, Any]) -> str | None:
        """Why a user token with ``claims`` is refused, or None when it is not revoked."""
        if str(claims.get("jti")) in self.tokens:
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
