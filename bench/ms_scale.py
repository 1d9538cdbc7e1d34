"""The management server at scale: N simulated recording servers against one management
server, its site on SQLite or on PostgreSQL (issue 17). Reported, never judged.

    python -m bench.ms_scale --servers 10,100,300,1000 --database sqlite,postgresql

For each size and database, a new site: a CA, a management server (its encryption on: the
management link is mutual TLS) and N recording servers, each with its own certificate and
key issued by the site CA. They are simulated by a few worker processes (``--workers``),
each speaking the real protocol: a TLS connection per server presenting that server's
certificate, a heartbeat a second (``POST /api/v1/servers/NAME/heartbeat`` with its
readiness and the digest of the configuration it was last given). Measured:

- the time from cold (the management server started, no server registered) until every
  server has registered (its first heartbeat answered 200);
- over a steady window (``--window`` seconds, every server heartbeating): the heartbeat
  latency (p50, p99, max) as the simulated servers see it, the management server's CPU (its
  process; and PostgreSQL's, every process of its server), CPU per heartbeat;
- API latency meanwhile, as an administrator's client sees it: log-in, a camera added to
  one server and removed (each a push to that server only), and the site status (which
  lists every server, so it grows with N by nature).

Results: bench/results/ms_scale.json and ms_scale.md, with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import proc_sample
from watchkeep.client import SiteConnection
from watchkeep.localsite import LocalPostgres, LocalSite
from watchkeep.pki import KeyType, Role, fingerprint
from watchkeep.servers._base import certificate_status
from watchkeep.site import Readiness, ServerRole
from watchkeep.store import SiteStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# -- the simulated recording servers (one worker process runs many) ----------------------


async def _simulate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the servers of ``spec`` until ``spec["until"]`` (epoch seconds); what they saw."""
    from cryptography import x509

    ms = spec["ms"]
    url = f"https://{ms['address']}:{ms['port']}"
    registered: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (sent at, seconds)
    errors: dict[str, int] = {}

    async def one(server: dict[str, Any], offset: float) -> None:
        context = ssl.create_default_context(cafile=spec["ca"])
        context.load_cert_chain(server["chain"], server["key"])
        leaf = x509.load_pem_x509_certificate(Path(server["chain"]).read_bytes())
        status = certificate_status(leaf)
        digest = ""
        connector = aiohttp.TCPConnector(ssl=context, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.sleep(offset)
            while time.time() < spec["until"]:
                body = {
                    "role": "recording",
                    "host": server["host"],
                    "address": server["address"],
                    "ports": {"data": 7563, "control": 9001},
                    "readiness": Readiness(status, (spec["ca_fingerprint"],)).as_json(_now()),
                    "encrypted_now": True,
                    "registration_key": spec["registration_key"],
                    "config_digest": digest,
                    "camera_problems": {},
                }
                sent = time.time()
                started = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/api/v1/servers/{server['name']}/heartbeat",
                        json=body,
                        server_hostname=ms["host"],
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as response:
                        answer = await response.json()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    ok, answer = False, None
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                elapsed = time.perf_counter() - started
                if ok:
                    digest = answer.get("config_digest", "")
                    registered.setdefault(server["name"], sent + elapsed)
                    latencies.append((sent, elapsed))
                elif answer is not None:  # refused (a problem answer); failures counted above
                    key = f"HTTP {answer.get('status')}: {answer.get('title')}"
                    errors[key] = errors.get(key, 0) + 1
                await asyncio.sleep(max(0.0, 1.0 - (time.time() - sent)))

    count = len(spec["servers"])
    started = time.time()
    spread = float(spec.get("spread", 1.0))  # seconds over which its servers start
    await asyncio.gather(
        *(one(s, spread * i / max(count, 1)) for i, s in enumerate(spec["servers"]))
    )
    return {"registered": registered, "latencies": latencies, "errors": errors, "started": started}


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_simulate(spec))
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


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


def run_one(
    count: int, database: str, *, workers: int, window: float, root: Path, spread: float = 1.0
) -> dict[str, Any]:
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
        site.connect_cli()
        connection = SiteConnection.load(site.home)
        replace(connection, encryption=True).save(site.home)
        ca_fingerprint = fingerprint(site.pki.ca_certificate())
        # From cold: the simulators are launched now; each server starts within ``spread``
        # seconds after its worker is up (registration is timed from then).
        cold = time.time()
        steady_from = cold + 20.0 + spread  # everyone registered, settled
        api_from = steady_from + window  # then the administrator's client too
        until = api_from + window
        procs, outs = [], []
        for w in range(workers):
            spec = {
                "ms": {"host": ms.host, "address": ms.address, "port": ms.ports["api"]},
                "ca": str(site.home.ca_cert),
                "ca_fingerprint": ca_fingerprint,
                "registration_key": site.registration_key_file.read_text().strip(),
                "servers": servers[w::workers],
                "until": until,
                "spread": spread,
                "out": str(root / f"{database}-{count}-worker{w}.json"),
            }
            path = root / f"{database}-{count}-spec{w}.json"
            path.write_text(json.dumps(spec))
            outs.append(root / f"{database}-{count}-worker{w}.json")
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.ms_scale", "--worker",
                                           str(path)], cwd=ROOT,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)}))  # fmt: skip
        ms_pid = ms.process.pid  # type: ignore[union-attr]
        time.sleep(max(0.0, steady_from - time.time()))
        ms_before = proc_sample(ms_pid)
        pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0]) if pg else None
        pg_before = proc_sample(pg_pid) if pg_pid else None
        wall_before = time.time()
        time.sleep(max(0.0, api_from - time.time()))
        wall = time.time() - wall_before
        ms_after = proc_sample(ms_pid)
        pg_after = proc_sample(pg_pid) if pg_pid else None
        api = asyncio.run(_api_load(site, until - 1.0, "rs0000"))
        for proc in procs:
            proc.wait(timeout=120)
        registered: dict[str, float] = {}
        latencies: list[float] = []
        loaded: list[float] = []  # while the administrator's client works too
        errors: dict[str, int] = {}
        workers_up = 0.0
        for path in outs:
            result = json.loads(path.read_text())
            workers_up = max(workers_up, result["started"] - cold)
            registered.update(result["registered"])
            latencies += [s for t, s in result["latencies"] if steady_from <= t < api_from]
            loaded += [s for t, s in result["latencies"] if api_from <= t < until - 1.0]
            for k, v in result["errors"].items():
                errors[k] = errors.get(k, 0) + v
        site.stop_all()
        ms_cpu = ms_after.cpu_seconds - ms_before.cpu_seconds
        return {
            "servers": count,
            "database": database,
            "certificates_issued_seconds": round(issued_in, 1),
            "registered": len(registered),
            "all_registered_seconds": round(max(registered.values()) - (cold + workers_up), 2)
            if len(registered) == count
            else None,
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
            "ms_cpu_ms_per_heartbeat": round(ms_cpu * 1000 / max(len(latencies), 1), 3),
            "postgresql_cpu_fraction_of_a_core": round(
                (pg_after.cpu_seconds - pg_before.cpu_seconds) / wall, 3
            )
            if pg_after and pg_before
            else None,
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
        "| heartbeat p50 / p99 / max (ms) "
        "| MS CPU (core) | MS CPU per heartbeat (ms) | PostgreSQL CPU (core) | log-in p99 (ms) "
        "| camera add+remove p99 (ms) | site status p99 (ms) | errors |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        hb, api = r["heartbeat_ms"], r["api_ms"]
        lines.append(
            f"| {r['database']} | {r['servers']} | {r['all_registered_seconds']} | "
            f"{r['heartbeats_in_window']} / {r['heartbeats_expected']} | "
            f"{hb['p50']} / {hb['p99']} / {hb['max']} | {r['ms_cpu_fraction_of_a_core']} | "
            f"{r['ms_cpu_ms_per_heartbeat']} | {r['postgresql_cpu_fraction_of_a_core']} | "
            f"{api['login']['p99']} | {api['camera add+remove']['p99']} | "
            f"{api['site status']['p99']} | "
            f"{dict(r['errors'], api_failed=api['failed']['n']) if r['errors'] or api['failed']['n'] else ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ms_scale", description=__doc__)
    parser.add_argument("--servers", default="10,100,300,1000")
    parser.add_argument("--database", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which the servers start"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ms_scale")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    runs = []
    with tempfile.TemporaryDirectory(prefix="wk-ms-scale-") as tmp:
        for database in args.database.split(","):
            for count in (int(n) for n in args.servers.split(",")):
                print(f"ms_scale: {count} servers on {database}...", flush=True)
                run = run_one(count, database, workers=args.workers, window=args.window,
                              root=Path(tmp), spread=args.spread)  # fmt: skip
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
        "(shared with other work: figures are an upper bound of the cost).\n\n"
        + _table(runs)
        + "\n"
    )
    print(_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
