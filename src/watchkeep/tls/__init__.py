"""TLS for every watchkeep link: SSLContext factories, the policy, hot reload, and the
translation of connection errors into watchkeep errors."""

from watchkeep.tls._contexts import (
    ClientAuth,
    ServerIdentity,
    TrustMaterial,
    check_server_identity,
    client_context,
    server_context,
)
from watchkeep.tls._errors import (
    Endpoint,
    explain_connection_failure,
    fetch_peer_certificate,
    speaks_tls,
)
from watchkeep.tls._policy import TlsPolicy, apply_policy
from watchkeep.tls._reload import ReloadableServerContext

__all__ = [
    "ClientAuth",
    "Endpoint",
    "ReloadableServerContext",
    "ServerIdentity",
    "TlsPolicy",
    "TrustMaterial",
    "apply_policy",
    "check_server_identity",
    "client_context",
    "explain_connection_failure",
    "fetch_peer_certificate",
    "server_context",
    "speaks_tls",
]
