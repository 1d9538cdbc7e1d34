"""`watchkeep demo`: a complete encrypted site on this machine, built the way an
administrator would build it, running until --duration passes or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from watchkeep.cli._common import print_table

__all__ = ["register"]

CAMERAS = [("cam1", "rs1"), ("cam2", "rs1"), ("cam3", "rs2"), ("cam4", "rs2")]


def register(groups: Any) -> None:
    demo = groups.add_parser("demo", help="run a complete encrypted site on this machine")
    demo.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    demo.add_argument(
        "--refresh", type=float, default=2.0, help="seconds between status tables (default 2)"
    )
    demo.add_argument(
        "--database-url",
        metavar="URL",
        help="keep the site in this database (postgresql+psycopg://USER@HOST/DB; "
        "default: SQLite in the management server's data directory)",
    )
    demo.set_defaults(handler=_demo)


def say(text: str) -> None:
    print(text, flush=True)


def _demo(args: argparse.Namespace) -> int:
    from watchkeep.errors import UsageError

    if args.home is not None:
        root = Path(args.home).expanduser().resolve()
        if root.exists() and any(root.iterdir()):
            raise UsageError(
                f"{root} is not empty; the demo builds a new site there",
                fix="pass an empty or new directory to --home, or leave --home out",
            )
    else:
        root = Path(tempfile.mkdtemp(prefix="watchkeep-demo-"))
    if args.database_url is not None:
        _refuse_a_used_database(args.database_url)
    return asyncio.run(_run(root, args.duration, args.refresh, args.database_url))


def _refuse_a_used_database(url: str) -> None:
    """The demo builds a new site: a database that holds one already is refused (its
    servers were registered by another CA and would stand in the way)."""
    import sqlalchemy as sa

    from watchkeep.errors import UsageError
    from watchkeep.store import create_engine, servers, shown

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            used = (
                sa.inspect(conn).has_table("servers")
                and conn.execute(sa.select(servers.c.name).limit(1)).first()
            )
    except sa.exc.SQLAlchemyError:
        return  # opening the site reports why the database cannot be used
    finally:
        engine.dispose()
    if used:
        raise UsageError(
            f"the database {shown(url)} already holds a site; the demo builds a new one",
            fix="pass an empty database to --database-url (createdb NAME)",
        )


async def _run(root: Path, duration: float | None, refresh: float, database_url: str | None) -> int:
    from watchkeep.localsite import LocalSite
    from watchkeep.pki import KeyType
    from watchkeep.site import ServerRole

    site = LocalSite(root, key_type=KeyType.RSA_2048, database_url=database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        say(f"watchkeep demo: building a site in {root}")
        site.init_ca("watchkeep Demo Site CA")
        say(f"  certificate authority: {site.home.ca_cert}")
        ms = site.add_server("ms", ServerRole.MANAGEMENT)
        say(
            f"  ms: management server {ms.host} on {ms.address}, with the CA beside it "
            f"(certificate {ms.chain.name}, key mode 0600)"
        )
        site.start("ms")  # from this thread: a server dies with the thread that started it
        site.connect_cli()
        say("  every other server joins with a one-time token, into a home of its own:")
        for name, role in [
            ("rs1", ServerRole.RECORDING),
            ("rs2", ServerRole.RECORDING),
            ("fo1", ServerRole.FAILOVER),
            ("mobile1", ServerRole.MOBILE),
        ]:
            server = await asyncio.to_thread(site.join_server, name, role)
            say(
                f"  {name}: watchkeep enroll create --name {name} --role {role.value} --host "
                f"{server.host} --ip {server.address}; on its machine: watchkeep --home "
                f"{server.directory.parent.parent} join TOKEN (key made there, mode 0600)"
            )
        for name in site.servers:
            if name != "ms":
                site.start(name)
        say("  all servers started as separate processes")
        await _build(site)
        await _watch(site, stop, duration, refresh)
        return 0
    finally:
        say("watchkeep demo: stopping every server")
        await asyncio.to_thread(site.stop_all)
        say(f"watchkeep demo: stopped; the site's files stay in {root}")


async def _wait_online(
    client: Any, names: set[str], logs: str, *, encrypted: bool = False, timeout: float = 30.0
) -> dict[str, Any]:
    """The site status once every server in ``names`` is online (and, if ``encrypted``,
    says it speaks TLS: a server reports it with its next heartbeat)."""
    from watchkeep.client import transient
    from watchkeep.errors import SiteNotReady

    deadline = time.monotonic() + timeout
    what = "online and speaking TLS" if encrypted else "online"
    while True:
        try:
            status: dict[str, Any] = await client.status()
        except Exception as exc:
            # A server busy starting or switching its listener: ask again until the deadline.
            if not transient(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
            continue
        ready = {
            s["name"]
            for s in status["servers"]
            if s["online"] and (s["encrypted_now"] or not encrypted)
        }
        if names <= ready:
            return status
        if time.monotonic() > deadline:
            waiting = ", ".join(sorted(names - ready))
            raise SiteNotReady(f"servers {what}", timeout, logs, last=f"not yet: {waiting}")
        await asyncio.sleep(0.3)


async def _build(site: Any) -> None:
    from watchkeep.client import SiteClient

    async with SiteClient(site.home) as client:
        await _wait_online(client, set(site.servers), site.logs)
        for camera, server in CAMERAS:
            await client.call(
                "POST",
                "/api/v1/cameras",
                {
                    "name": camera,
                    "recording_server": server,
                    "source": {
                        "kind": "synthetic",
                        "width": 640,
                        "height": 360,
                        "fps": 10,
                        "target_bytes": 40_000,
                    },
                },
            )
        say(f"  cameras added: {', '.join(f'{c} -> {s}' for c, s in CAMERAS)}")
        for name in ("rs1", "rs2", "fo1", "mobile1", "ms"):
            await client.set_encryption(name, True)
            say(f"  encryption enable --server {name}: done")
            await asyncio.sleep(0.3)
    # A new session: the management server now speaks TLS only.
    async with SiteClient(site.home) as client:
        status = await _wait_online(client, set(site.servers), site.logs, encrypted=True)
        encrypted = [s["name"] for s in status["servers"] if s["encrypted_now"]]
        say(f"  servers speaking TLS now: {', '.join(encrypted)}")


async def _viewer(
    site: Any, camera: str, counts: dict[str, list[float]], stop: asyncio.Event
) -> None:
    import aiohttp

    from watchkeep.client import SiteClient
    from watchkeep.client._video import stream_frames
    from watchkeep.errors import WatchkeepError

    while not stop.is_set():
        try:
            async with SiteClient(site.home) as client:
                access = await client.stream_access(camera)
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(resolver=client.resolver())
                ) as session:
                    async for _frame in stream_frames(
                        client, access, f"/api/v1/cameras/{camera}/live.mjpeg", session
                    ):
                        counts[camera].append(time.monotonic())
                        if stop.is_set():
                            return
        except (WatchkeepError, aiohttp.ClientError, OSError) as exc:
            _LAST_ERRORS[camera] = str(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


_LAST_ERRORS: dict[str, str] = {}


async def _watch(site: Any, stop: asyncio.Event, duration: float | None, refresh: float) -> None:
    from watchkeep.client import Backoff, SiteClient, transient

    mobile = site.servers["mobile1"]
    say("")
    say(f"web client (log in as admin with the password in {site.password_file}):")
    say(f"  https://{mobile.host}:{mobile.ports['https']}/   (address {mobile.address})")
    say(
        f"  a browser must trust the CA file {site.home.ca_cert} and resolve "
        f"{mobile.host} to {mobile.address}, e.g."
    )
    say(
        f"  chromium --host-resolver-rules='MAP {mobile.host} {mobile.address}' "
        f"https://{mobile.host}:{mobile.ports['https']}/"
    )
    say(
        f"  curl --cacert {site.home.ca_cert} --resolve {mobile.host}:{mobile.ports['https']}:"
        f"{mobile.address} https://{mobile.host}:{mobile.ports['https']}/healthz"
    )
    say(f"while it runs: watchkeep --home {site.home.root} site status --json")
    say("")
    counts: dict[str, list[float]] = {c: [] for c, _ in CAMERAS}
    viewers = [asyncio.create_task(_viewer(site, c, counts, stop)) for c, _ in CAMERAS]
    ends = None if duration is None else time.monotonic() + duration
    backoff = Backoff()
    try:
        while not stop.is_set():
            try:
                async with SiteClient(site.home) as client:
                    await _show_status(client, stop, ends, refresh, counts, backoff)
                return
            except Exception as exc:
                # One failed call (a server at its connection limit, restarting, slow to
                # answer) must not stop the whole site: say so, wait, log in again.
                if not transient(exc):
                    raise
                delay = backoff.failed()
                say(f"watchkeep demo: site status failed ({exc}); trying again in {delay:g} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    finally:
        stop.set()
        for task in viewers:
            task.cancel()
        for task in viewers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _show_status(
    client: Any,
    stop: asyncio.Event,
    ends: float | None,
    refresh: float,
    counts: dict[str, list[float]],
    backoff: Any,
) -> None:
    """Print the status table every ``refresh`` seconds until ``stop`` or ``ends``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), refresh)
        status = await client.status()
        backoff.succeeded()
        _print_status(status, counts)
        if ends is not None and time.monotonic() >= ends:
            return


def _print_status(status: dict[str, Any], counts: dict[str, list[float]]) -> None:
    now = time.monotonic()
    print_table(
        ["server", "role", "host", "encryption", "TLS now", "state", "cert days left"],
        [
            [
                s["name"],
                s["role"],
                s["host"],
                "on" if s["encryption"] else "off",
                "yes" if s["encrypted_now"] else "no",
                "online" if s["online"] else "OFFLINE",
                f"{s['certificate']['days_left']:.0f}" if s.get("certificate") else "-",
            ]
            for s in status["servers"]
        ],
    )
    rows = []
    for camera in status["cameras"]:
        recent = [t for t in counts.get(camera["name"], []) if now - t <= 5.0]
        rows.append(
            [
                camera["name"],
                camera["recording_server"],
                f"{len(recent) / 5.0:.1f}",
                _LAST_ERRORS.get(camera["name"], "")[:80] if not recent else "",
            ]
        )
    print()
    print_table(["camera", "recording server", "frames/s (TLS viewer)", "last error"], rows)
    print("-" * 72, flush=True)
    sys.stdout.flush()
