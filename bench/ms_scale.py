"""The management server at scale: N simulated recording servers against one management
server, its site on SQLite or on PostgreSQL (issue 17). Reported, never judged.

    python -m bench.ms_scale --servers 10,100,300,1000 --database sqlite,postgresql

For each size and database, a new site: a CA, a management server (its encryption on: the
management link is mutual TLS) and N recording servers, each with its own certificate and
key issued by the site CA. They are simulated by a few worker processes (``--workers``,
bench/heartbeaters.py), each speaking the real protocol: a TLS connection per server
presenting that server's certificate, kept open, a heartbeat a second (``POST
/api/v1/servers/NAME/heartbeat`` with its readiness, its renewal report and the digest of
the configuration it was last given), and renewals (``POST /api/v1/renewals``, at the rate
of a thousand servers renewing in ten minutes by default) after which a server goes on with
its new certificate. The management server is pinned to one CPU (``--ms-cpu``), the
simulators to the others. Measured:

- the time from cold (the management server started, no server registered) until every
  server has registered (its first heartbeat answered 200);
- over a steady window (``--window`` seconds, every server heartbeating, some renewing):
  the heartbeat latency (p50, p99, max) as the simulated servers see it, the management
  server's CPU (its process, and its event loop's thread alone; and PostgreSQL's, every
  process of its server), CPU per heartbeat, the machine's load;
- API latency meanwhile, as an administrator's client sees it: log-in, a camera added to
  one server and removed (each a push to that server only), and the site status (which
  lists every server, so it grows with N by nature).

``--profile`` records the management server with py-spy over the steady window
(bench/results/profile-ms-N-DATABASE.txt, the hottest functions).

Results: bench/results/ms_scale.json and ms_scale.md, with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench._common import idle_seconds, proc_sample
from bench.run import start_py_spy, summarize_profile
from watchkeep.client import SiteConnection
from watchkeep.localsite import LocalPostgres, LocalSite
from watchkeep.pki import KeyType, Role, fingerprint
from watchkeep.site import ServerRole
from watchkeep.store import SiteStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# -- the administrator's client meanwhile ---------------------------------------------------


async def _api_load(site: LocalSite, until: float, rs: str) -> dict[str, list[float]]:
    """Timings of each kind of call (seconds); a call that fails is counted under
    "failed" with the time it took to fail."""
    from watchkeep.client import SiteClient
    from watchkeep.errors import WatchkeepError

    timings: dict[str, list[float]] = {
        "login": [], "camera add+remove": [], "site status": [], "failed": [],
    }  # fmt: skip
    n = 0
    while time.time() < until:
        started = time.perf_counter()
        try:
            async with SiteClient(site.home) as client:
                timings["login"].append(time.perf_counter() - started)
                for _ in range(5):
                    n += 1
                    started = time.perf_counter()
                    await client.call("POST", "/api/v1/cameras", {"name": f"bench{n}",
                                      "recording_server": rs, "source": {"kind": "synthetic"}})  # fmt: skip
                    await client.call("DELETE", f"/api/v1/cameras/bench{n}")
                    timings["camera add+remove"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await client.call("GET", "/api/v1/site/status")
                    timings["site status"].append(time.perf_counter() - started)
                    await asyncio.sleep(0.5)
        except WatchkeepError:
            timings["failed"].append(time.perf_counter() - started)
    return timings


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# -- one run: a site of N servers on one database -----------------------------------------


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


@dataclass
class Options:
    workers: int = 2
    window: float = 20.0
    spread: float = 1.0  # seconds over which the servers start
    ms_cpu: int | None = None  # the one CPU the management server runs on (None: any)
    profile: bool = False  # py-spy the management server over the steady window
    renewals_per_minute: float = 100.0  # per thousand servers: 1,000 renew in ten minutes
    settle: float | None = None  # seconds from cold to the steady window (None: by size)


def run_one(count: int, database: str, root: Path, options: Options) -> dict[str, Any]:
    pg = LocalPostgres(durable=True).start() if database == "postgresql" else None
    try:
        url = pg.create_database() if pg is not None else None
        site = LocalSite(root / f"{database}-{count}", key_type=KeyType.ECDSA_P256,
                         database_url=url, failover_after=5.0, renew_check_interval=300.0)  # fmt: skip
        site.init_ca()
        ms = site.add_server("ms", ServerRole.MANAGEMENT)
        # A thousand servers keep a connection each, all from this machine's address.
        ms.extra = {"server": {"max_connections": 8192, "max_connections_per_address": 8192}}
        site.write_config(ms)
        ms.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = SiteStore(url or f"sqlite:///{ms.data_dir / 'site.db'}")
        store.set_setting("ms_encryption", True)  # the management link is mutual TLS
        store.dispose()
        started = time.time()
        servers = []
        out = root / f"{database}-{count}-certs"
        for i in range(count):
            host = f"rs{i:04d}.bench.test"
            address = f"127.251.{i // 250}.{i % 250 + 1}"
            record = site.pki.issue(Role.RECORDING, [host], ips=[address], out=out,
                                    key_type=KeyType.ECDSA_P256)  # fmt: skip
            servers.append({"name": f"rs{i:04d}", "host": host, "address": address,
                            "chain": record.chain_path, "key": record.key_path})  # fmt: skip
        issued_in = time.time() - started
        site.start("ms")
        ms_pid = ms.process.pid  # type: ignore[union-attr]
        cpus = set(range(os.cpu_count() or 1))
        if options.ms_cpu is not None:
            _pin(ms_pid, {options.ms_cpu})
        sim_cpus = sorted(cpus - {options.ms_cpu}) or sorted(cpus)
        site.connect_cli()
        connection = SiteConnection.load(site.home)
        replace(connection, encryption=True).save(site.home)
        ca_fingerprint = fingerprint(site.pki.ca_certificate())
        # From cold: the simulators are launched now; each server starts within ``spread``
        # seconds after its worker is up (registration is timed from then).
        cold = time.time()
        window, spread = options.window, options.spread
        # Everyone registered and settled (on two shared cores a thousand handshakes and
        # first answers take a while): the steady window starts after this.
        steady_from = cold + spread + (options.settle or max(20.0, count / 20))
        api_from = steady_from + window  # then the administrator's client too
        until = api_from + window
        # Renewals spread evenly over the steady window, by servers spread over the site.
        renewing = min(count, round(count * options.renewals_per_minute / 1000 * window / 60))
        renew_at = {
            (k * count) // max(renewing, 1): steady_from + window * (k + 0.5) / renewing
            for k in range(renewing)
        }
        procs, outs = [], []
        for w in range(options.workers):
            mine = range(w, count, options.workers)
            spec = {
                "ms": {"host": ms.host, "address": ms.address, "port": ms.ports["api"]},
                "ca": str(site.home.ca_cert),
                "ca_fingerprint": ca_fingerprint,
                "registration_key": site.registration_key_file.read_text().strip(),
                "servers": [servers[i] for i in mine],
                "renew_at": {j: renew_at[i] for j, i in enumerate(mine) if i in renew_at},
                "until": until,
                "spread": spread,
                "cpus": sim_cpus,
                "out": str(root / f"{database}-{count}-worker{w}.json"),
            }
            path = root / f"{database}-{count}-spec{w}.json"
            path.write_text(json.dumps(spec))
            outs.append(root / f"{database}-{count}-worker{w}.json")
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.heartbeaters",
                                           str(path)], cwd=ROOT,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)}))  # fmt: skip
        time.sleep(max(0.0, steady_from - time.time()))
        ms_before = proc_sample(ms_pid)
        pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0]) if pg else None
        pg_before = proc_sample(pg_pid) if pg_pid else None
        sim_before = [proc_sample(p.pid) for p in procs]
        idle_before = idle_seconds()
        wall_before = time.time()
        spy = (
            start_py_spy(ms_pid, window, RESULTS, f"ms-{count}-{database}")
            if options.profile
            else None
        )
        time.sleep(max(0.0, api_from - time.time()))
        wall = time.time() - wall_before
        ms_after = proc_sample(ms_pid)
        pg_after = proc_sample(pg_pid) if pg_pid else None
        sim_after = [proc_sample(p.pid) for p in procs]
        idle = (idle_seconds() - idle_before) / wall
        load = os.getloadavg()[0]
        api = asyncio.run(_api_load(site, until - 1.0, "rs0000"))
        for proc in procs:
            proc.wait(timeout=120)
        if spy is not None:
            spy.wait(timeout=60)
            raw = RESULTS / f"profile-ms-{count}-{database}.raw"  # py-spy's collapsed stacks
            summarize_profile(raw, raw.with_suffix(".txt"))
        registered: dict[str, float] = {}
        latencies: list[float] = []
        loaded: list[float] = []  # while the administrator's client works too
        renewals: list[float] = []
        errors: dict[str, int] = {}
        workers_up = 0.0
        handshakes = closed = full = full_bytes = 0
        for path in outs:
            result = json.loads(path.read_text())
            workers_up = max(workers_up, result["started"] - cold)
            registered.update(result["registered"])
            latencies += [s for t, s in result["latencies"] if steady_from <= t < api_from]
            loaded += [s for t, s in result["latencies"] if api_from <= t < until - 1.0]
            renewals += result["renewals"]
            handshakes += result["handshakes"]
            closed += result["closed"]
            full += result["full_answers"]
            full_bytes += result["full_bytes"]
            for k, v in result["errors"].items():
                errors[k] = errors.get(k, 0) + v
        site.stop_all()
        ms_cpu = ms_after.cpu_seconds - ms_before.cpu_seconds
        ms_loop = ms_after.main_thread_seconds - ms_before.main_thread_seconds
        beats = max(len(latencies), 1)
        return {
            "servers": count,
            "database": database,
            "certificates_issued_seconds": round(issued_in, 1),
            "registered": len(registered),
            "all_registered_seconds": round(max(registered.values()) - (cold + workers_up), 2)
            if len(registered) == count
            else None,
            "steady_window_from_cold_seconds": round(steady_from - cold, 1),
            "simulators_up_seconds": round(workers_up, 2),
            "heartbeats_in_window": len(latencies),
            "heartbeats_expected": int(count * window),
            "heartbeat_ms": {
                "p50": _ms(_percentile(latencies, 0.5)),
                "p99": _ms(_percentile(latencies, 0.99)),
                "max": _ms(max(latencies, default=None)),
            },
            "heartbeat_ms_with_api_load": {
                "p50": _ms(_percentile(loaded, 0.5)),
                "p99": _ms(_percentile(loaded, 0.99)),
            },
            "ms_cpu_fraction_of_a_core": round(ms_cpu / wall, 3),
            "ms_cpu_ms_per_heartbeat": round(ms_cpu * 1000 / beats, 3),
            "ms_system_cpu_ms_per_heartbeat": round(
                (ms_after.system_seconds - ms_before.system_seconds) * 1000 / beats, 3
            ),
            "ms_event_loop_cpu_ms_per_heartbeat": round(ms_loop * 1000 / beats, 3),
            "ms_pinned_to_cpu": options.ms_cpu,
            "simulators_cpu_fraction_of_a_core": round(
                sum(
                    a.cpu_seconds - b.cpu_seconds
                    for a, b in zip(sim_after, sim_before, strict=True)
                )
                / wall,
                3,
            ),
            "machine_idle_cores": round(idle, 2),
            "load_average_1min": round(load, 2),
            "postgresql_cpu_fraction_of_a_core": round(
                (pg_after.cpu_seconds - pg_before.cpu_seconds) / wall, 3
            )
            if pg_after and pg_before
            else None,
            "renewals": {
                "asked": renewing,
                "done": len(renewals),
                "p50_ms": _ms(_percentile(renewals, 0.5)),
                "max_ms": _ms(max(renewals, default=None)),
            },
            "handshakes": handshakes,
            "connections_closed_by_ms": closed,
            "full_configuration_answers": full,
            "full_configuration_bytes": full_bytes,
            "api_ms": {
                kind: {
                    "n": len(values),
                    "p50": _ms(_percentile(values, 0.5)),
                    "p99": _ms(_percentile(values, 0.99)),
                }
                for kind, values in api.items()
            },
            "errors": errors,
            "start_spread_seconds": spread,
            "window_seconds": round(wall, 1),
        }
    finally:
        if pg is not None:
            pg.stop()


def _table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| database | servers | all registered from cold (s) | heartbeats answered / due "
        "| heartbeat p50 / p99 / max (ms) | MS CPU (core) | MS CPU per heartbeat (ms) "
        "| of which event loop (ms) | PostgreSQL CPU (core) | renewals done / asked "
        "| log-in p99 (ms) | camera add+remove p99 (ms) | site status p99 (ms) "
        "| heartbeat p50 / p99 while the API is called (ms) | full configurations sent (n / MB) "
        "| load average | errors |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- | --- | ---: | --- |",
    ]
    for r in runs:
        hb, api, busy = r["heartbeat_ms"], r["api_ms"], r["heartbeat_ms_with_api_load"]
        errors = (
            dict(r["errors"], api_failed=api["failed"]["n"]) if api["failed"]["n"] else r["errors"]
        )
        lines.append(
            f"| {r['database']} | {r['servers']} | {r['all_registered_seconds']} | "
            f"{r['heartbeats_in_window']} / {r['heartbeats_expected']} | "
            f"{hb['p50']} / {hb['p99']} / {hb['max']} | {r['ms_cpu_fraction_of_a_core']} | "
            f"{r['ms_cpu_ms_per_heartbeat']} | {r['ms_event_loop_cpu_ms_per_heartbeat']} | "
            f"{r['postgresql_cpu_fraction_of_a_core']} | "
            f"{r['renewals']['done']} / {r['renewals']['asked']} | "
            f"{api['login']['p99']} | {api['camera add+remove']['p99']} | "
            f"{api['site status']['p99']} | "
            f"{busy['p50']} / {busy['p99']} | "
            f"{r['full_configuration_answers']} / {r['full_configuration_bytes'] / 1e6:.1f} | "
            f"{r['load_average_1min']} | "
            f"{errors or ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ms_scale", description=__doc__)
    parser.add_argument("--servers", default="10,100,300,1000")
    parser.add_argument("--database", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which the servers start"
    )
    parser.add_argument(
        "--ms-cpu",
        type=int,
        default=0 if (os.cpu_count() or 1) > 1 else -1,
        help="the CPU the management server is pinned to, the simulators on the others "
        "(-1: not pinned)",
    )
    parser.add_argument(
        "--renewals-per-minute",
        type=float,
        default=100.0,
        help="per thousand servers, over the steady window (100: 1,000 in ten minutes)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds from cold to the steady window (default: 20, or one per 20 servers)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the management server (steady window)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ms_scale")
    args = parser.parse_args(argv)
    options = Options(
        workers=args.workers,
        window=args.window,
        spread=args.spread,
        ms_cpu=None if args.ms_cpu < 0 else args.ms_cpu,
        profile=args.profile,
        renewals_per_minute=args.renewals_per_minute,
        settle=args.settle,
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="wk-ms-scale-") as tmp:
        for database in args.database.split(","):
            for count in (int(n) for n in args.servers.split(",")):
                print(f"ms_scale: {count} servers on {database}...", flush=True)
                run = run_one(count, database, Path(tmp), options)
                print(json.dumps(run), flush=True)
                runs.append(run)
    command = "python -m bench.ms_scale " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": command.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(
        f"# The management server at scale\n\n`{report['command']}` on {os.cpu_count()} CPUs "
        "(the machine's load average in each row: above 1, other work shared it and the "
        "figures are an upper bound of the cost).\n\n" + _table(runs) + "\n"
    )
    print(_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
