"""Benchmark of renewals over the network (issue 14): figures reported, never pass/fail.

    .venv/bin/python -m bench.renewals [--quick] [--servers 1000] [--window 60] [--out FILE]

For each key type of a site (its CA and its servers' keys both RSA-2048, or both ECDSA
P-256), one real management server process, encrypted, signs renewals through its CA home:

1. **Renewals per second** one management server signs: simulated servers, each with its
   own certificate issued by the site CA and its own directory, send ``POST
   /api/v1/renewals`` over mutual TLS (a new connection and handshake each, as separate
   machines would), 8 at a time, as fast as the server answers. Their new keys and CSRs
   are made before the clock starts: the figure is the management server's. Baseline, in
   the same process tree: ``pki.renew_from_csr`` called in-process on the same kind of CA
   (checks, signing, inventory, files), with no network and no HTTP; the ratio is
   network / in-process.
2. **The API's p99 while 1,000 servers renew within ten minutes**, scaled down in time:
   the renewals are spread evenly over ``--window`` seconds (60 s by default, ten times
   faster than ten minutes: ten times the rate of the real case), sent by two worker
   processes with real mutual TLS, each simulated server with its own certificate.
   Meanwhile an administrator's client calls ``GET /api/v1/servers`` every 50 ms on a
   kept-alive connection. Baseline: the same probe for 10 s with no renewal running. ECDSA
   P-256 only (RSA-2048 keys for 1,000 servers take minutes to make on two cores).

Joins are not measured here: enrollment (``POST /api/v1/enrollments``, ``watchkeep join``)
is built on another branch; a join is signed by the same CA code path (a CSR through the
CA home), so its rate is expected near the renewal rate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from bench._common import Histogram
from watchkeep._clock import utcnow_to_second
from watchkeep._home import Home
from watchkeep.client import open_session
from watchkeep.client._http import SiteResolver
from watchkeep.localsite import LocalSite
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.pki._keys import load_private_key
from watchkeep.pki._profiles import generate_key
from watchkeep.pki._renewal import renew_from_csr
from watchkeep.servers._renewal import renewal_request, verify_renewal_request
from watchkeep.site import ServerRole
from watchkeep.tls import ServerIdentity, TrustMaterial, client_context

HERE = Path(__file__).resolve().parent
CONCURRENCY = 8
PROBE_INTERVAL = 0.05


# -- simulated servers ----------------------------------------------------------------------


def issue_simulated(pki: SitePKI, root: Path, count: int, key_type: KeyType) -> list[Path]:
    """``count`` servers, each a directory with its own key and chain from the site CA."""
    out = []
    for i in range(count):
        directory = root / f"sim{i:04d}"
        pki.issue(Role.RECORDING, [f"sim{i:04d}.bench.test"], key_type=key_type, out=directory)
        out.append(directory)
    return out


def prepared(
    directory: Path, audience: str, trust_dir: Path
) -> tuple[ssl.SSLContext, dict[str, Any]]:
    """A simulated server's mutual-TLS context and its renewal request (new key, CSR)."""
    name = directory.name
    chain = directory / f"recording-{name}.bench.test.chain.pem"
    key = directory / f"recording-{name}.bench.test.key"
    trust = TrustMaterial.load(trust_dir)
    context = client_context(trust, identity=ServerIdentity(name, f"{name}.bench.test", chain, key))
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    current = load_private_key(key)
    new = generate_key(KeyType.ECDSA_P256 if "EC" in type(current).__name__ else KeyType.RSA_2048)
    return context, renewal_request(leaf, current, new, audience=audience, now=utcnow_to_second())


async def renew(
    session: aiohttp.ClientSession, url: str, context: ssl.SSLContext, body: dict[str, Any]
) -> float:
    started = time.perf_counter()
    async with session.post(
        url, json=body, ssl=context, headers={"Connection": "close"}
    ) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"renewal answered {response.status}: {await response.text()}")
    return time.perf_counter() - started


async def renew_all(
    ms: dict[str, Any], items: list[tuple[ssl.SSLContext, dict[str, Any]]]
) -> list[float]:
    """Renew every item as fast as the management server answers, 8 at a time."""
    url = f"https://{ms['host']}:{ms['port']}/api/v1/renewals"
    took: list[float] = []
    gate = asyncio.Semaphore(CONCURRENCY)
    async with open_session({ms["host"]: ms["address"]}, timeout=60, limit=0) as session:

        async def one(context: ssl.SSLContext, body: dict[str, Any]) -> None:
            async with gate:
                took.append(await renew(session, url, context, body))

        await asyncio.gather(*(one(c, b) for c, b in items))
    return took


def worker(
    args: tuple[dict[str, Any], list[str], str, float, float, int, int],
) -> tuple[list[float], list[str]]:
    """One load process of figure 2: its share of the servers, each at its time."""
    ms, directories, trust_dir, start_at, window, offset, total = args
    items = [prepared(Path(d), ms["host"], Path(trust_dir)) for d in directories]

    async def run() -> tuple[list[float], list[str]]:
        url = f"https://{ms['host']}:{ms['port']}/api/v1/renewals"
        took: list[float] = []
        failed: list[str] = []

        async def one(i: int, context: ssl.SSLContext, body: dict[str, Any]) -> None:
            # The servers of all workers interleave: server k renews at k/total, each from
            # a loopback address of its own, as separate machines would.
            index = offset + i * 2
            source = f"127.250.{index // 250}.{index % 250 + 1}"
            await asyncio.sleep(max(0.0, start_at + window * index / total - time.time()))
            connector = aiohttp.TCPConnector(
                resolver=SiteResolver({ms["host"]: ms["address"]}), local_addr=(source, 0)
            )
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=120)
            ) as session:
                try:
                    took.append(await renew(session, url, context, body))
                except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
                    failed.append(f"{type(exc).__name__}: {exc}"[:200])

        await asyncio.gather(*(one(i, c, b) for i, (c, b) in enumerate(items)))
        return took, failed

    return asyncio.run(run())


# -- the API probe ----------------------------------------------------------------------------


async def probe(
    ms: dict[str, Any], token: str, trust: Path, seconds: float
) -> tuple[Histogram, int]:
    """The API's latency, one call every 50 ms; and how many calls failed."""
    histogram = Histogram()
    failed = 0
    context = client_context(TrustMaterial.load(trust))
    url = f"https://{ms['host']}:{ms['port']}/api/v1/servers"
    deadline = time.monotonic() + seconds
    async with open_session({ms["host"]: ms["address"]}, timeout=30) as session:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with session.get(
                    url, ssl=context, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                ok = False
            if ok:
                histogram.add(time.perf_counter() - started)
            else:
                failed += 1
            await asyncio.sleep(PROBE_INTERVAL)
    return histogram, failed


def percentiles(measured: tuple[Histogram, int]) -> dict[str, float | None]:
    histogram, failed = measured
    return {
        "samples": histogram.total,
        "failed": failed,
        "p50_ms": _ms(histogram.percentile(0.5)),
        "p99_ms": _ms(histogram.percentile(0.99)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# -- one site -------------------------------------------------------------------------------


def in_process_rate(key_type: KeyType, count: int, root: Path) -> float:
    """The baseline: the CA's part of a renewal, in this process."""
    pki = SitePKI(Home(root / "baseline"))
    pki.init_ca("Baseline CA", key_type=key_type)
    records = [
        pki.issue(Role.RECORDING, [f"b{i}.bench.test"], key_type=key_type, out=root / f"b{i}")
        for i in range(count)
    ]
    requests = []
    for r in records:
        assert r.key_path is not None
        leaf = x509.load_pem_x509_certificate(Path(r.cert_path).read_bytes())
        body = renewal_request(
            leaf, load_private_key(Path(r.key_path)), generate_key(key_type),
            audience="ms", now=utcnow_to_second(),
        )  # fmt: skip
        requests.append(verify_renewal_request(body, audience="ms", now=utcnow_to_second(),
                                               peer=leaf))  # fmt: skip
    started = time.perf_counter()
    for presented, csr in requests:
        renew_from_csr(pki, presented, csr, rejoin="-")
    return count / (time.perf_counter() - started)


def run_site(
    key_type: KeyType, root: Path, *, throughput_count: int, servers: int, window: float | None
) -> dict[str, Any]:
    site = LocalSite(root / "home", key_type=key_type)
    site.init_ca("Bench Site CA", key_type=key_type)
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.start("ms")
    try:
        site.connect_cli()
        site.encrypt("ms")
        ms_server = site.management
        ms: dict[str, Any] = {"host": ms_server.host, "address": ms_server.address,
              "port": ms_server.ports["api"]}  # fmt: skip
        total = max(throughput_count, servers if window else 0)
        print(f"{key_type}: issuing {total} simulated servers' certificates ...", flush=True)
        directories = issue_simulated(site.pki, root / "sims", total, key_type)
        items = [
            prepared(d, ms["host"], site.home.trust_dir) for d in directories[:throughput_count]
        ]
        started = time.perf_counter()
        took = asyncio.run(renew_all(ms, items))
        rate = throughput_count / (time.perf_counter() - started)
        baseline = in_process_rate(key_type, min(throughput_count, 100), root)
        result: dict[str, Any] = {
            "renewals": throughput_count,
            "concurrency": CONCURRENCY,
            "renewals_per_second": round(rate, 1),
            "median_renewal_ms": round(statistics.median(took) * 1000, 1),
            "in_process_renewals_per_second": round(baseline, 1),
            "ratio_network_to_in_process": round(rate / baseline, 3),
        }
        print(f"{key_type}: {json.dumps(result)}", flush=True)
        if window:
            token = site.login_token()
            idle = asyncio.run(probe(ms, token, site.home.trust_dir, 10.0))
            start_at = time.time() + 20.0  # the workers make their keys and CSRs first
            shares = [[str(d) for d in directories[:servers][w::2]] for w in range(2)]
            context = multiprocessing.get_context("spawn")
            with context.Pool(2) as pool:
                pending = pool.map_async(
                    worker,
                    [
                        (ms, shares[w], str(site.home.trust_dir), start_at, window, w, servers)
                        for w in range(2)
                    ],
                )
                time.sleep(max(0.0, start_at - time.time()))
                busy = asyncio.run(probe(ms, token, site.home.trust_dir, window))
                parts = pending.get(timeout=window + 600)
            durations = [t for took, _ in parts for t in took]
            failures = [f for _, failed in parts for f in failed]
            result["under_load"] = {
                "servers": servers,
                "window_seconds": window,
                "scaled_from": "1,000 servers in 600 s: the same renewals 600/window times faster",
                "renewals_done": len(durations),
                "renewals_failed": len(failures),
                "failures_seen": sorted(set(failures))[:5],
                "renewal_p99_ms": (
                    round(sorted(durations)[max(0, int(0.99 * len(durations)) - 1)] * 1000, 1)
                    if durations
                    else None
                ),
                "api_idle": percentiles(idle),
                "api_while_renewing": percentiles(busy),
            }
            print(f"{key_type}: {json.dumps(result['under_load'])}", flush=True)
        return result
    finally:
        site.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few renewals, no load phase")
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "renewals.json")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WATCHKEEP_BENCH_QUICK") == "1"
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.renewals", *(argv or sys.argv[1:])]),
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="wk-bench-renew-") as tmp:
        for key_type in (KeyType.ECDSA_P256, KeyType.RSA_2048):
            load = key_type is KeyType.ECDSA_P256 and not quick
            results[key_type.value] = run_site(
                key_type,
                Path(tmp) / key_type.value,
                throughput_count=10 if quick else (300 if key_type is KeyType.ECDSA_P256 else 150),
                servers=args.servers,
                window=args.window if load else None,
            )
    if not quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
