"""Benchmark of joins (issue 14): how many servers one management server lets join per
second, reported, never pass/fail on time.

    .venv/bin/python bench/bench_joins.py [--joins N] [--workers W] [--out FILE]

For RSA-2048 and for ECDSA P-256 (the site CA and the servers' keys both of that type), a
management server holding the CA runs on a loopback address as its own process; N tokens
are made through its API (not timed), then W clients send N joins (`POST /api/v1/join`: the
token checked against its hash, consumed by one SQL statement, the CSR checked and signed
through the CA home, the certificate recorded in the inventory and written there, the trust
bundle read) as fast as it answers. The baseline, in this process, is the bare signing of
the same CSRs by `pki._enrollment.sign_joining_server` on a CA home of its own: the ratio
says what the token, the HTTP round trip and the bookkeeping cost on top of signing.

Results are printed and written as JSON to bench/results/joins.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from watchkeep._home import Home
from watchkeep.client import SiteClient
from watchkeep.localsite import LocalSite
from watchkeep.pki import KeyType, Role, SitePKI, generate_key
from watchkeep.pki._enrollment import sign_joining_server
from watchkeep.site import ServerRole

HERE = Path(__file__).resolve().parent
KEY_TYPES = (KeyType.RSA_2048, KeyType.ECDSA_P256)


def csr(key_type: KeyType, host: str) -> x509.CertificateSigningRequest:
    key = generate_key(key_type)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )


async def make_tokens(site: LocalSite, count: int) -> list[tuple[str, str]]:
    """(token, host) for ``count`` new recording servers, through one logged-in session."""
    made = []
    async with SiteClient(site.home) as client:
        for n in range(count):
            host = f"j{n}.site.test"
            answer = await client.call(
                "POST",
                "/api/v1/enrollments",
                {"name": f"j{n}", "role": "recording", "host": host, "ttl": "1h"},
            )
            made.append((answer["token"], host))
    return made


def post_join(url: str, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(  # noqa: S310 -- the benchmark's own loopback http:// URL
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 -- loopback http
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def measure(key_type: KeyType, joins: int, workers: int, root: Path) -> dict[str, Any]:
    site = LocalSite(root / key_type.value, key_type=key_type)
    site.init_ca(f"bench {key_type.value} CA", key_type=key_type)
    ms = site.add_server("ms", ServerRole.MANAGEMENT)
    site.start("ms")
    try:
        site.connect_cli()
        tokens = asyncio.run(make_tokens(site, joins))
        requests = [
            json.dumps(
                {
                    "token": token,
                    "csr": csr(key_type, host).public_bytes(serialization.Encoding.PEM).decode(),
                }
            ).encode()
            for token, host in tokens
        ]
        url = f"http://{ms.address}:{ms.ports['api']}/api/v1/join"
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda body: post_join(url, body), requests))
        elapsed = time.perf_counter() - started
    finally:
        site.stop_all()
    failed = sum(1 for status, _ in results if status != 201)
    latencies = sorted(t for _, t in results)
    # The baseline: the same signing, in this process, on a CA home of its own.
    pki = SitePKI(Home(root / f"baseline-{key_type.value}"))
    pki.init_ca("baseline CA", key_type=key_type)
    csrs = [csr(key_type, f"b{n}.site.test") for n in range(joins)]
    started = time.perf_counter()
    for n, request in enumerate(csrs):
        sign_joining_server(pki, request, Role.RECORDING, f"b{n}.site.test", ())
    baseline = time.perf_counter() - started
    per_second = joins / elapsed
    baseline_per_second = joins / baseline
    return {
        "figure": f"joins_per_second_{key_type.value}",
        "description": f"joins/s signed by one management server ({workers} clients, plaintext "
        f"API), CA and server keys {key_type.value}, vs in-process sign_joining_server",
        "joins": joins,
        "failed": failed,
        "watchkeep_per_second": round(per_second, 2),
        "baseline_per_second": round(baseline_per_second, 2),
        "ratio": round(per_second / baseline_per_second, 3),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "joins.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="watchkeep-bench-joins-") as scratch:
        figures = [measure(k, args.joins, args.workers, Path(scratch)) for k in KEY_TYPES]
    report = {
        "benchmark": "joins",
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "figures": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for figure in figures:
        print(
            f"{figure['figure']}: {figure['watchkeep_per_second']}/s "
            f"(bare signing {figure['baseline_per_second']}/s, ratio {figure['ratio']}), "
            f"p50 {figure['latency_p50_ms']} ms, p99 {figure['latency_p99_ms']} ms, "
            f"{figure['failed']} failed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
