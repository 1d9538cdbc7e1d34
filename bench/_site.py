"""The benchmark's site and the processes around it: a LocalSite, viewers, camera farms,
nginx and openssl s_server, each started here and stopped by whoever started it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench._common import Histogram, ProcSample, idle_seconds, proc_sample
from watchkeep.client import SiteClient
from watchkeep.localsite import LocalSite, wait_until
from watchkeep.servers._tokens import TokenSigner
from watchkeep.site import ServerRole

ROOT = Path(__file__).resolve().parent.parent
LOGS = "the site's servers/*/server.log"
T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """``check``'s first true value, waiting through OSError (a server not listening yet)
    and AssertionError; SiteNotReady once ``timeout`` passes."""
    return wait_until(
        check, what=what, logs=LOGS, timeout=timeout, retry_on=(AssertionError, OSError)
    )


def python_module(module: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **kwargs,
    )


def wait_port(address: str, port: int, timeout: float = 20.0) -> None:
    def check() -> bool:
        with socket.create_connection((address, port), 0.2):
            return True

    eventually(check, f"{address}:{port} listening", timeout)


def stop_process(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class BenchSite:
    """A management server and one recording server (rs1); a failover server on demand."""

    def __init__(self, root: Path, *, failover_after: float, heartbeat: float) -> None:
        self.site = LocalSite(
            root, failover_after=failover_after, heartbeat_interval=heartbeat, auto_renew=False
        )

    def start(self) -> None:
        site = self.site
        site.init_ca("watchkeep Bench Site CA")
        site.add_server("ms", ServerRole.MANAGEMENT)
        rs1 = site.add_server("rs1", ServerRole.RECORDING)
        # Recordings are kept on disk (the real cost), within a bound so that a long run
        # cannot fill it.
        rs1.extra["recording"] = {"max_bytes": 4 * 1024**3}
        # Room for a viewer per camera past the default limits of connections per listener
        # (512) and per client address (128: every viewer here comes from 127.0.0.1, on a
        # site they come from many), so that the capacity search is not capped by a setting.
        rs1.extra["server"] = {"max_connections": 4096, "max_connections_per_address": 4096}
        site.write_config(rs1)
        site.start("ms", wait=False)
        site.start("rs1", wait=False)
        site.wait_listening(site.servers["ms"])
        site.wait_listening(rs1)
        site.connect_cli()
        self.wait_online("rs1")

    def stream_tokens(self, cameras: list[str]) -> dict[str, str]:
        """A stream token for each camera (each good at the camera's recording server
        only), as viewers get them from the management server."""

        async def go() -> dict[str, str]:
            async with SiteClient(self.site.home) as client:
                return {c: (await client.stream_access(c)).token for c in cameras}

        result: dict[str, str] = self.run(go())
        return result

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        async def go() -> Any:
            async with SiteClient(self.site.home) as client:
                return await client.call(method, path, body)

        return self.run(go())

    def api_many(self, calls: list[tuple[str, str, Any]]) -> None:
        async def go() -> None:
            async with SiteClient(self.site.home) as client:
                for method, path, body in calls:
                    await client.call(method, path, body)

        self.run(go())

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.api("GET", "/api/v1/site/status")
        return result

    def server(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["servers"] if s["name"] == name)

    def wait_online(self, *names: str) -> None:
        def check() -> bool:
            servers = {s["name"]: s for s in self.status()["servers"]}
            return all(servers.get(n, {}).get("online") for n in names)

        eventually(check, f"{', '.join(names)} online")

    def set_encryption(self, name: str, on: bool, timeout: float = 60.0) -> None:
        self.api("POST", f"/api/v1/servers/{name}/encryption", {"enabled": on})

        def check() -> bool:
            s = self.server(name)
            return bool(s["encryption"] == on and s["encrypted_now"] == on and s["online"])

        eventually(check, f"{name} encryption {'on' if on else 'off'}", timeout)

    def rs_status(self, name: str = "rs1") -> dict[str, Any]:
        """The recording server's own status (every camera, the recorder's counters), as
        the management server reads it: on the control link, with a control token signed
        with the management server's key and, once that link is encrypted, its
        certificate (the benchmark runs the whole site, management server included)."""
        import http.client
        import ssl

        server, ms = self.site.servers[name], self.site.management
        port = server.ports["control"]
        signer = TokenSigner.load_or_create(ms.data_dir / "token.key")
        token = signer.issue(ms.name, "control", name, 60)
        sock = socket.create_connection((server.address, port), timeout=30)
        if self.server("ms")["encryption"]:
            context = ssl.create_default_context(cafile=str(self.site.home.ca_cert))
            context.load_cert_chain(ms.chain, ms.key)
            sock = context.wrap_socket(sock, server_hostname=server.host)
        connection = http.client.HTTPConnection(server.host, port, timeout=30)
        connection.sock = sock
        try:
            connection.request(
                "GET", "/control/v1/status", headers={"Authorization": f"Bearer {token}"}
            )
            answer: dict[str, Any] = json.loads(connection.getresponse().read())
            return answer
        finally:
            connection.close()

    def pid(self, name: str) -> int:
        process = self.site.servers[name].process
        assert process is not None
        return process.pid

    def stop(self) -> None:
        self.site.stop_all()


@dataclass
class ViewerRun:
    """What all viewer processes of one measurement saw, with the server's CPU meanwhile."""

    connections: int
    connected: int
    seconds: float
    bytes: int
    frames: int
    gaps: int
    errors: list[str]
    error_count: int
    ended_early: int
    frames_per_viewer_min: int
    delays: Histogram
    silent: list[str] = field(default_factory=list)  # targets of viewers that got no frame
    cpu: dict[str, float] = field(default_factory=dict)  # process label -> cores used
    system: dict[str, float] = field(default_factory=dict)  # ... of which in the kernel
    main_thread: dict[str, float] = field(default_factory=dict)  # ... in its first thread
    machine_idle: float = 0.0  # cores of the machine left idle meanwhile
    rss: dict[str, int] = field(default_factory=dict)  # process label -> bytes at the end

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def delay(self, fraction: float) -> float | None:
        return self.delays.percentile(fraction)


def run_viewers(
    targets: list[dict[str, Any]],
    *,
    ca: Path | None,
    token: str | None,
    warmup: float,
    duration: float,
    processes: int,
    repeat: bool = False,
    watch: dict[str, int] | None = None,
    during: Callable[[], None] | None = None,
    protocol: str = "mjpeg",
    clock_offset: float | None = None,
) -> ViewerRun:
    """Open ``targets`` from ``processes`` viewer processes, let them warm up, count for
    ``duration`` seconds; CPU of the ``watch`` processes (label -> pid) is measured over
    exactly the counted window. ``during`` runs at the start of the counted window.
    ``protocol``: ``mjpeg`` (HTTP multipart) or ``ws`` (live.ws, fMP4); ``clock_offset``
    (ws): the cameras' clock, as the monotonic clock plus this (see bench.viewers)."""
    processes = max(1, min(processes, len(targets)))
    spawned = [
        python_module("bench.viewers", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(processes)
    ]
    try:
        for index, process in enumerate(spawned):
            spec = {
                "targets": targets[index::processes],
                "ca": str(ca) if ca else None,
                "token": token,
                "duration": duration,
                "repeat": repeat,
                "protocol": protocol,
                "clock_offset": clock_offset,
            }
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
        for process in spawned:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "connected":
                raise RuntimeError(f"a viewer process failed to start: {line!r}")
        for process in spawned:
            assert process.stdin is not None
            process.stdin.write("start\n")
            process.stdin.flush()
        time.sleep(warmup)
        watched = {**(watch or {}), **{f"viewers{i}": p.pid for i, p in enumerate(spawned)}}
        before = {label: proc_sample(pid) for label, pid in watched.items()}
        idle_before = idle_seconds()
        began = time.monotonic()
        for process in spawned:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        if during is not None:
            during()
        time.sleep(max(0.0, duration - (time.monotonic() - began)))
        after = {label: proc_sample(pid) for label, pid in watched.items()}
        idle_after = idle_seconds()
        elapsed = time.monotonic() - began
        results = []
        for process in spawned:
            assert process.stdout is not None
            results.append(json.loads(process.stdout.readline()))
    finally:
        for process in spawned:
            stop_process(process)
    delays = Histogram()
    for result in results:
        delays.merge(Histogram.from_compact(result["delays"]))
    return ViewerRun(
        connections=sum(r["connections"] for r in results),
        connected=sum(r["connected"] for r in results),
        seconds=max(r["seconds"] for r in results),
        bytes=sum(r["bytes"] for r in results),
        frames=sum(r["frames"] for r in results),
        gaps=sum(r["gaps"] for r in results),
        errors=[e for r in results for e in r["errors"]][:10],
        error_count=sum(r["error_count"] for r in results),
        ended_early=sum(r["ended_early"] for r in results),
        frames_per_viewer_min=min(r["frames_per_viewer_min"] for r in results),
        silent=[s for r in results for s in r["silent"]][:10],
        delays=delays,
        cpu={k: _cores(before[k], after[k], elapsed) for k in before},
        system={k: (after[k].system_seconds - before[k].system_seconds) / elapsed for k in before},
        main_thread={
            k: (after[k].main_thread_seconds - before[k].main_thread_seconds) / elapsed
            for k in before
        },
        machine_idle=(idle_after - idle_before) / elapsed,
        rss={k: after[k].rss_bytes for k in after},
    )


def _cores(before: ProcSample, after: ProcSample, seconds: float) -> float:
    return (after.cpu_seconds - before.cpu_seconds) / seconds if seconds else 0.0


@contextlib.contextmanager
def camera_farms(
    address_of: Callable[[int], str], cameras: int, per_farm: int
) -> Iterator[list[Any]]:
    """Farm processes serving ``cameras`` cameras (``per_farm`` each), farm k at
    ``address_of(k)`` port 8554; yields [(address, process), ...]."""
    farms: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for k in range(-(-cameras // per_farm)):
            first = k * per_farm
            address = address_of(k)
            process = python_module(
                "bench.camfarm",
                "--address",
                address,
                "--port",
                "8554",
                "--first",
                str(first),
                "--count",
                str(min(per_farm, cameras - first)),
                stdout=subprocess.PIPE,
            )
            farms.append((address, process))
        for _address, process in farms:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a camera farm failed to start")
        yield farms
    finally:
        for _address, process in farms:
            stop_process(process)


def farm_stats(address: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}:8554/stats", timeout=10) as answer:
        stats: dict[str, Any] = json.loads(answer.read())
        return stats
