"""The client library used by the CLI, the servers and tests."""

from watchkeep.client._http import ApiError, SiteResolver, call_json, open_session
from watchkeep.client._retry import Backoff, transient
from watchkeep.client._site import SiteClient, SiteConnection, StreamAccess

__all__ = [
    "ApiError",
    "Backoff",
    "SiteClient",
    "SiteConnection",
    "SiteResolver",
    "StreamAccess",
    "call_json",
    "open_session",
    "transient",
]
