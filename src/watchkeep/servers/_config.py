"""Server configuration files (TOML): one per server process."""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from watchkeep._names import validate_host_name
from watchkeep.errors import HomeError, WatchkeepError
from watchkeep.pki import profile_for
from watchkeep.pki._lifecycle import DEFAULT_RENEW_AT, DEFAULT_WARN_DAYS, parse_warn_days
from watchkeep.servers._listener import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    REQUEST_TIMEOUT,
    ListenerLimits,
)
from watchkeep.site import DEFAULT_PORTS, ServerRole
from watchkeep.tls import ServerIdentity, TlsPolicy

__all__ = ["ManagementLink", "RecordingSettings", "ServerConfig", "load_config"]


@dataclass(frozen=True)
class ManagementLink:
    """How a recording or mobile server reaches the management server."""

    host: str
    address: str
    port: int
    registration_key: str | None
    # The site's other management servers (one PostgreSQL database): tried in turn when
    # the one spoken to does not answer. (host, address, port) each.
    others: tuple[tuple[str, str, int], ...] = ()

    def addresses(self) -> list[tuple[str, str, int]]:
        """Every management server of the site this server may speak to, first the first."""
        return [(self.host, self.address, self.port), *self.others]


@dataclass(frozen=True)
class RecordingSettings:
    """The ``[recording]`` table of a recording server: segment length, retention (by age
    and by size, none when unset) and where the segment writer runs."""

    segment_seconds: float = 60.0
    max_age: float | None = None
    max_bytes: int | None = None
    writer: Literal["thread", "process"] = "thread"


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    name: str
    role: ServerRole
    host: str
    address: str
    ports: dict[str, int]
    data_dir: Path
    policy: TlsPolicy
    certificate: Path | None
    key: Path | None
    trust_store: Path | None
    service_account: str | None
    heartbeat_interval: float
    management: ManagementLink | None
    warn_days: tuple[int, ...] = DEFAULT_WARN_DAYS
    listener_limits: ListenerLimits = field(default_factory=ListenerLimits)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    # management server only
    failover_after: float = 5.0
    admin_password: str | None = None
    registration_key: str | None = None
    database_url: str | None = None  # None: SQLite in data_dir
    database_password_file: Path | None = None
    token_ttl: float = 900.0
    # Log-in rate limiting: failures allowed in a row before back-off, per account and per
    # client address, and the longest back-off.
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_backoff_max: float = 300.0
    ca_home: Path | None = None  # management server: the CA it signs joins and renewals with
    # management server with ca_home: [ports] publish, the plaintext listener that
    # publishes the CA certificates and CRLs (never in `ports`: every listener there is TLS
    # when encryption is on)
    publish_port: int | None = None
    ca_passphrase: str | None = None
    renew_at: float = DEFAULT_RENEW_AT
    renew_jitter: float = 0.05
    renew_check_interval: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> ServerIdentity | None:
        if self.certificate is None or self.key is None:
            return None
        return ServerIdentity(
            server=self.name,
            host=self.host,
            chain=self.certificate,
            key=self.key,
            service_account=self.service_account,
            # A server that dials out (every one, on the management link) proves its name
            # with this certificate: its role's profile says so.
            needs_client_auth=profile_for(self.role).client_auth,
        )


def _renewal_table(
    server: dict[str, Any], site: dict[str, Any], key: str
) -> tuple[str, dict[str, Any], str]:
    return ("server", server, key) if key in server else ("site", site, key)


def _fail(path: Path, message: str, fix: str) -> HomeError:
    return HomeError(f"config {path}: {message}", fix=fix)


def _secret(base: Path, table: dict[str, Any], key: str, config: Path) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    file = (base / str(value)).resolve()
    try:
        text = file.read_text().strip()
    except OSError as exc:
        raise _fail(config, f"cannot read {key} {file}: {exc.strerror}", f"create {file}") from exc
    if not text:
        raise _fail(config, f"{key} {file} is empty", f"write the secret into {file}")
    return text


def _warn_days(path: Path, value: Any) -> tuple[int, ...]:
    try:
        return parse_warn_days(value)
    except (TypeError, ValueError):
        raise _fail(
            path,
            f"[server] expiry_warn_days = {value!r} is not a list of whole days",
            "write e.g. expiry_warn_days = [30, 14, 7]",
        ) from None


def _listener_limits(path: Path, server: dict[str, Any]) -> ListenerLimits:
    counts = [server.get(k, d) for k, d in _COUNTS.items()]
    timeouts = [server.get(k, d) for k, d in _TIMEOUTS.items()]
    whole = all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts)
    seconds = all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0
        for t in timeouts
    )
    if whole and seconds:
        return ListenerLimits(
            max_connections=counts[0],
            max_connections_per_address=counts[1],
            handshake_timeout=float(timeouts[0]),
            idle_timeout=float(timeouts[1]),
            request_timeout=float(timeouts[2]),
        )
    names, values = [*_COUNTS, *_TIMEOUTS], [*counts, *timeouts]
    given = ", ".join(f"{k} = {v!r}" for k, v in zip(names, values, strict=True))
    raise _fail(
        path,
        f"[server] {given}: {' and '.join(_COUNTS)} must be whole numbers >= 1, and "
        f"{', '.join(_TIMEOUTS)} positive numbers of seconds",
        "write e.g. " + ", ".join(f"{k} = {v:g}" for k, v in {**_COUNTS, **_TIMEOUTS}.items()),
    )


_COUNTS = {
    "max_connections": MAX_CONNECTIONS,
    "max_connections_per_address": MAX_CONNECTIONS_PER_ADDRESS,
}
_TIMEOUTS = {
    "handshake_timeout": HANDSHAKE_TIMEOUT,
    "idle_timeout": IDLE_TIMEOUT,
    "request_timeout": REQUEST_TIMEOUT,
}


def _number(
    path: Path, table: str, values: dict[str, Any], key: str, default: float, *, whole: bool = False
) -> Any:
    """A positive number from the config, or one line that says which and how to fix it."""
    value = values.get(key, default)
    kind = int if whole else float
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and whole:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(value) or value <= 0:
        raise _fail(
            path,
            f"[{table}] {key} = {value!r} is not a positive {'whole ' if whole else ''}number",
            f"write e.g. {key} = {kind(default)!r}",
        )
    return kind(value)


def _recording(path: Path, table: dict[str, Any]) -> RecordingSettings:
    segment_seconds = _number(path, "recording", table, "segment_seconds", 60.0)
    max_age = (
        _number(path, "recording", table, "max_age", 2_592_000) if "max_age" in table else None
    )
    max_bytes = (
        _number(path, "recording", table, "max_bytes", 500_000_000_000, whole=True)
        if "max_bytes" in table
        else None
    )
    writer = table.get("writer", "thread")
    if writer not in ("thread", "process"):
        raise _fail(
            path,
            f'[recording] writer is {writer!r}: it is "thread" or "process"',
            'write writer = "thread" (or "process" on a server with cores to spare)',
        )
    return RecordingSettings(
        segment_seconds, max_age, max_bytes, "process" if writer == "process" else "thread"
    )


def _fraction(path: Path, value: float) -> float:
    if not 0 < value < 1:
        raise _fail(
            path,
            f"[site] renew_at = {value!r} is not a fraction of a certificate's lifetime",
            "write e.g. renew_at = 0.6667 (renew at 2/3 of the lifetime)",
        )
    return value


def _other_management(path: Path, entry: Any) -> tuple[str, str, int]:
    """One of ``[management] others = [{host = ..., address = ..., port = 9000}, ...]``."""
    try:
        return (
            validate_host_name(str(entry["host"])),
            str(ipaddress.ip_address(str(entry["address"]))),
            int(entry.get("port", DEFAULT_PORTS[ServerRole.MANAGEMENT]["api"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError, WatchkeepError):
        raise _fail(
            path,
            f"[management] others: {entry!r} is not a management server",
            'write others = [{host = "ms2.site.example", address = "10.0.0.11", port = 9000}]',
        ) from None


def load_config(path: Path) -> ServerConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise _fail(path, f"cannot read it: {exc.strerror}", "pass --config FILE") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}", "fix the syntax (https://toml.io)") from exc
    base = path.parent.resolve()
    server = raw.get("server", {})
    try:
        role = ServerRole(str(server.get("role", "")))
    except ValueError:
        roles = list(ServerRole)
        raise _fail(
            path,
            f"[server] role {server.get('role')!r} is not a server role",
            f"set role to {', '.join(r.value for r in roles[:-1])} or {roles[-1].value}",
        ) from None
    for key in ("name", "host", "address"):
        if not server.get(key):
            raise _fail(path, f"[server] {key} is missing", f"add {key} = ... under [server]")
    ports = dict(DEFAULT_PORTS[role])
    given_ports = dict(raw.get("ports", {}))
    publish_port = given_ports.pop("publish", None) if role is ServerRole.MANAGEMENT else None
    for name, value in given_ports.items():
        if name not in ports or not isinstance(value, int) or not 0 < value < 65536:
            raise _fail(
                path,
                f"[ports] {name} = {value!r} is not a port of a {role.value} server",
                f"use {', '.join(ports)} with numbers 1-65535",
            )
        ports[name] = value
    site = raw.get("site", {})
    if publish_port is not None:
        if not isinstance(publish_port, int) or not 0 < publish_port < 65536:
            raise _fail(
                path,
                f"[ports] publish = {publish_port!r} is not a port",
                "write e.g. publish = 9080 (the plaintext listener that publishes the CA)",
            )
        if not site.get("ca_home"):
            raise _fail(
                path,
                f"[ports] publish = {publish_port} but this management server holds no CA "
                "to publish",
                "set [site] ca_home = DIR (the CA's home), or remove [ports] publish",
            )
        if publish_port in ports.values():
            raise _fail(
                path,
                f"[ports] publish = {publish_port} is also the port of another listener",
                "give the publish listener a port of its own, e.g. publish = 9080",
            )
    tls = raw.get("tls", {})

    def file(key: str) -> Path | None:
        return (base / str(tls[key])).resolve() if tls.get(key) else None

    link = None
    if role is not ServerRole.MANAGEMENT:
        ms = raw.get("management")
        if not ms or not ms.get("host") or not ms.get("address"):
            raise _fail(
                path,
                "[management] host and address are missing",
                "add [management] host = ..., address = ..., port = 9000",
            )
        link = ManagementLink(
            host=validate_host_name(str(ms["host"])),
            address=str(ms["address"]),
            port=_number(
                path,
                "management",
                ms,
                "port",
                DEFAULT_PORTS[ServerRole.MANAGEMENT]["api"],
                whole=True,
            ),
            registration_key=_secret(base, ms, "registration_key_file", path),
            others=tuple(_other_management(path, m) for m in ms.get("others", [])),
        )
    recording = _recording(path, raw.get("recording", {}))
    data_dir = (base / str(server.get("data_dir", f"{server['name']}-data"))).resolve()
    return ServerConfig(
        path=path,
        name=str(server["name"]),
        role=role,
        host=validate_host_name(str(server["host"])),
        address=str(server["address"]),
        ports=ports,
        data_dir=data_dir,
        policy=TlsPolicy.parse(str(server.get("tls_policy", "intermediate"))),
        certificate=file("certificate"),
        key=file("key"),
        trust_store=file("trust_store"),
        service_account=server.get("service_account") or None,
        heartbeat_interval=_number(path, "server", server, "heartbeat_interval", 1.0),
        warn_days=_warn_days(path, server.get("expiry_warn_days", DEFAULT_WARN_DAYS)),
        listener_limits=_listener_limits(path, server),
        recording=recording,
        management=link,
        failover_after=_number(path, "site", site, "failover_after", 5.0),
        admin_password=_secret(base, site, "admin_password_file", path),
        registration_key=_secret(base, site, "registration_key_file", path),
        # `database` is the name releases before 0.2 read
        database_url=site.get("database_url") or site.get("database"),
        database_password_file=(
            (base / str(site["database_password_file"])).resolve()
            if site.get("database_password_file")
            else None
        ),
        token_ttl=_number(path, "site", site, "token_ttl", 900.0),
        login_failures_per_account=_number(
            path, "site", site, "login_failures_per_account", 5, whole=True
        ),
        login_failures_per_address=_number(
            path, "site", site, "login_failures_per_address", 20, whole=True
        ),
        login_backoff_max=_number(path, "site", site, "login_backoff_max", 300.0),
        ca_home=(base / str(site["ca_home"])).resolve() if site.get("ca_home") else None,
        publish_port=publish_port,
        ca_passphrase=_secret(base, site, "ca_passphrase_file", path),
        # Every server renews its own certificate: [server] says when (a management
        # server's [site] table is read too, where these settings were first).
        renew_at=_fraction(
            path, _number(path, *_renewal_table(server, site, "renew_at"), DEFAULT_RENEW_AT)
        ),
        renew_jitter=_number(path, *_renewal_table(server, site, "renew_jitter"), 0.05),
        renew_check_interval=_number(
            path, *_renewal_table(server, site, "renew_check_interval"), 300.0
        ),
        extra={
            k: v
            for k, v in raw.items()
            if k not in ("server", "ports", "tls", "management", "site")
        },
    )
