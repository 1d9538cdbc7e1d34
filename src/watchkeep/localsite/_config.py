"""A local server's config file, written from data.

``server_document`` says what a server's ``server.toml`` holds, as tables of values;
``dumps_toml`` writes such a document as TOML that ``watchkeep.servers.load_config``
reads back. The writer knows the values a config holds: strings (paths as strings),
booleans, whole and real numbers, lists of those and inline tables; anything else is a bug here,
refused with TypeError rather than written as something the server would misread.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchkeep.localsite._layout import LocalServer
from watchkeep.site import ServerRole

if TYPE_CHECKING:
    from watchkeep.localsite._site import LocalSite

__all__ = ["dumps_toml", "server_document"]

Document = dict[str, dict[str, Any]]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def server_document(site: LocalSite, server: LocalServer) -> Document:
    """What ``server``'s config says: who it is, its listeners and TLS files, and how it
    reaches the management server (or, for the management server, the site's secrets and
    CA); then ``server.extra``, table by table, over that."""
    document: Document = {
        "server": {
            "name": server.name,
            "role": server.role.value,
            "host": server.host,
            "address": server.address,
            "data_dir": server.data_dir.name,  # relative: the config's own directory
            "heartbeat_interval": site.heartbeat_interval,
            # Every server renews its own certificate; this often it looks whether it is due.
            "renew_check_interval": site.renew_check_interval,
        },
        "ports": dict(server.ports),
        "tls": {"certificate": server.chain, "key": server.key, "trust_store": server.trust_dir},
    }
    if server.role is ServerRole.MANAGEMENT:
        # The site's home is the CA home: the (first) management server renews with it; a
        # second one, on a machine of its own, has no CA.
        renews = site.auto_renew and server is site.management
        document["site"] = {
            "admin_password_file": site.password_file,
            "registration_key_file": site.registration_key_file,
            "failover_after": site.failover_after,
            # The site's home is the CA home: the (first) management server signs renewals
            # with it; a second one, on a machine of its own, has no CA.
            **({"ca_home": site.home.root} if renews else {}),
            **({"database_url": site.database_url} if site.database_url else {}),
        }
    else:
        ms = site.management
        document["management"] = {
            "host": ms.host,
            "address": ms.address,
            "port": ms.ports["api"],
            "registration_key_file": site.registration_key_file,
        }
        others = [
            {"host": m.host, "address": m.address, "port": m.ports["api"]}
            for m in site.managements[1:]
        ]
        if others:
            document["management"]["others"] = others
    for table, values in server.extra.items():
        document.setdefault(table, {}).update(values)
    return document


def dumps_toml(document: Mapping[str, Mapping[str, Any]]) -> str:
    """``document`` (table -> key -> value) as TOML: each table under its header, its keys
    in order, a blank line after each table."""
    parts = []
    for table, values in document.items():
        lines = [f"[{_key(table)}]", *(f"{_key(k)} = {_value(v)}" for k, v in values.items())]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escaped = "".join(
        _ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
        for c in text
    )
    return f'"{escaped}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: a bool is an int too
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return _string(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"a config value must be a string, path, boolean, number or list: {value!r}")
