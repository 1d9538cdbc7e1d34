"""Certificate hot reload: new handshakes get new files, open connections carry on.

asyncio fixes a listener's SSLContext when the listener is created, so the listener gets a
*front* context whose server-name callback (run on every ClientHello, with or without SNI)
moves the connection to the *current* context. Reloading builds and checks a complete new
context from the files, then swaps it in; a file that is broken, expired or for another
host is refused and the working context stays.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from watchkeep.errors import WatchkeepError
from watchkeep.tls._contexts import (
    ClientAuth,
    ServerIdentity,
    TrustMaterial,
    check_server_identity,
    server_context,
)
from watchkeep.tls._policy import TlsPolicy

__all__ = ["ReloadableServerContext"]

log = logging.getLogger("watchkeep.tls")


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    leaf: x509.Certificate
    stamp: tuple[object, ...]
    trust: TrustMaterial


class ReloadableServerContext:
    def __init__(
        self,
        identity: ServerIdentity,
        policy: TlsPolicy,
        *,
        client_auth: str = ClientAuth.NONE,
        on_reload: Callable[[x509.Certificate], None] | None = None,
        trust_dir: Path | None = None,
    ) -> None:
        self.identity = identity
        self.policy = policy
        self.client_auth = client_auth
        self.on_reload = on_reload
        self._trust_dir = trust_dir
        self._current = self._build()
        # The front context only hands each handshake to the current one (SNI callback):
        # it is made of the files just checked, without checking them again.
        self.front = server_context(
            identity, policy, client_auth=client_auth, trust=self._current.trust
        )
        self.front.sni_callback = self._choose_context
        self.last_error: Exception | None = None
        self._failed_stamp: tuple[object, ...] | None = None

    @property
    def context(self) -> ssl.SSLContext:
        return self._current.context

    @property
    def certificate(self) -> x509.Certificate:
        return self._current.leaf

    def _stamp(self, trust: TrustMaterial) -> tuple[object, ...]:
        files = [self.identity.chain, self.identity.key]
        return (*[(str(p), p.stat().st_mtime_ns) for p in files if p.exists()], trust.stamp())

    def _trust(self) -> TrustMaterial:
        if self._trust_dir is None:
            return TrustMaterial(Path(), (), ())
        return TrustMaterial.load(self._trust_dir)

    def _build(self) -> _Loaded:
        trust = self._trust()
        stamp = self._stamp(trust)
        leaf = check_server_identity(self.identity, trust)
        context = server_context(
            self.identity, self.policy, client_auth=self.client_auth, trust=trust
        )
        return _Loaded(context, leaf, stamp, trust)

    def _choose_context(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        sslobj.context = self._current.context

    def changed(self) -> bool:
        try:
            stamp = self._stamp(self._trust())
        except OSError:
            return False  # a file is being replaced; look again on the next tick
        return stamp not in (self._current.stamp, self._failed_stamp)

    def reload(self) -> bool:
        """Load the files again; True when a new certificate or trust store is now served."""
        try:
            loaded = self._build()
        except (WatchkeepError, OSError, ValueError, ssl.SSLError) as exc:
            # Said once per change of the files, not on every tick.
            log.error("%s: keeping the certificate in use: %s", self.identity.server, exc)
            self.last_error = exc
            try:
                self._failed_stamp = self._stamp(self._trust())
            except OSError:
                self._failed_stamp = None
            return False
        self.last_error = None
        self._failed_stamp = None
        previous = self._current.leaf
        self._current = loaded
        if loaded.leaf.serial_number != previous.serial_number:
            log.info(
                "%s: now serving certificate serial %x (not after %s)",
                self.identity.server,
                loaded.leaf.serial_number,
                loaded.leaf.not_valid_after_utc.isoformat(),
            )
        if self.on_reload is not None:
            self.on_reload(loaded.leaf)
        return True

    def reload_if_changed(self) -> bool:
        return self.changed() and self.reload()
