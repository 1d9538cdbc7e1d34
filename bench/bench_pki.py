"""Benchmark of the site certificate authority (issue 2): ratios, never pass/fail on time.

    .venv/bin/python bench/bench_pki.py [--quick] [--out FILE]

Two figures, each measured against a baseline run in the same process tree:

1. Certificates issued per second in-process (`SitePKI.issue`: validation, key generation,
   signing, three files written atomically and fsynced, one inventory row) for ECDSA P-256
   and RSA-2048 leaf keys, as a ratio to a bare `cryptography` loop that generates the same
   key and signs the same certificate (same CA, same extensions) in memory. Target >= 0.7.
2. The wall time of one `watchkeep cert issue` process, as a ratio to the equivalent
   `openssl req -new` + `openssl x509 -req` pair with the same CA and extensions. Target <= 3.

Both use a CA made with the defaults of `watchkeep ca init` (RSA-3072). Results are printed
and written as JSON to bench/results/pki.json (or --out). --quick (or WATCHKEEP_BENCH_QUICK=1)
runs each figure for a fraction of a second, for the smoke test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._home import Home
from watchkeep.pki import (
    CertificateAuthority,
    KeyType,
    LeafRequest,
    Role,
    SitePKI,
    generate_key,
    profile_for,
)
from watchkeep.pki._keys import private_key_pem

HERE = Path(__file__).resolve().parent
RATE_TARGET = 0.7
PROCESS_TARGET = 3.0
KEY_TYPES = (KeyType.ECDSA_P256, KeyType.RSA_2048)


# -- figure 1: in-process issuance rate ---------------------------------------------------


def bare_issue(ca: CertificateAuthority, key_type: KeyType, host: str) -> tuple[bytes, bytes]:
    """What issuing is at its core: a new key and a signed certificate, in memory (the
    CA's own signing, without the files, the inventory and the locks around it)."""
    key = generate_key(key_type)
    request = LeafRequest(profile_for(Role.RECORDING), (host,), (), 90)
    cert = ca.sign_server_certificate(key.public_key(), request, now=dt.datetime.now(dt.UTC))
    return private_key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def paired_rates(
    baseline: Callable[[int], object], ours: Callable[[int], object], budget: float, minimum: int
) -> tuple[float, float, int]:
    """Calls per second of ``baseline(i)`` and ``ours(i)``, run alternately so that a change
    in the machine's load (or RSA key generation's wide spread) falls on both alike."""
    spent_baseline = spent_ours = 0.0
    count = 0
    while count < minimum or spent_baseline + spent_ours < budget:
        start = time.perf_counter()
        baseline(count)
        middle = time.perf_counter()
        ours(count)
        spent_baseline += middle - start
        spent_ours += time.perf_counter() - middle
        count += 1
    return count / spent_baseline, count / spent_ours, count


def issuance_rates(work: Path, budget: float, minimum: int) -> list[dict[str, Any]]:
    pki = SitePKI(Home(work / "in-process"))
    ca = pki.init_ca("Bench Site CA")  # the defaults of `ca init`: RSA-3072
    figures = []
    for key_type in KEY_TYPES:
        prefix = key_type.value
        # Warm both paths (imports, database schema, first fsync) before timing either.
        bare_issue(ca, key_type, f"warm.{prefix}.bench.example")
        pki.issue(Role.RECORDING, [f"warm.{prefix}.bench.example"], key_type=key_type)

        def baseline(i: int, kt: KeyType = key_type, p: str = prefix) -> object:
            return bare_issue(ca, kt, f"b{i}.{p}.bench.example")

        def watchkeep(i: int, kt: KeyType = key_type, p: str = prefix) -> object:
            return pki.issue(Role.RECORDING, [f"w{i}.{p}.bench.example"], key_type=kt)

        bare, ours, n = paired_rates(
            baseline,
            watchkeep,
            budget,
            minimum,
        )
        figures.append(
            {
                "figure": f"issue_rate_{key_type.value}",
                "description": f"certificates/s in-process, {key_type.value} leaf keys, "
                "watchkeep SitePKI.issue vs bare cryptography keygen+sign",
                "watchkeep_per_second": round(ours, 2),
                "baseline_per_second": round(bare, 2),
                "iterations": n,
                "ratio": round(ours / bare, 3),
                "target": f">= {RATE_TARGET}",
                "meets_target": round(ours / bare, 3) >= RATE_TARGET,
            }
        )
    return figures


# -- figure 2: one process ----------------------------------------------------------------

EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:{host}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def openssl_pair(home: Home, key_type: KeyType, host: str, work: Path) -> float:
    """`openssl req -new` (new key + CSR) then `openssl x509 -req` (CA signs), timed."""
    newkey = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if key_type is KeyType.ECDSA_P256
        else ["-newkey", "rsa:2048"]
    )
    key, csr, cert, ext = (work / f"{host}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(EXTENSIONS.format(host=host))
    serial = f"0x{x509.random_serial_number():x}"
    return wall_time(
        ["openssl", "req", "-new", *newkey, "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={host}"]
    ) + wall_time(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(home.ca_cert),
         "-CAkey", str(home.ca_key), "-set_serial", serial, "-days", "90",
         "-extfile", str(ext), "-out", str(cert)]
    )  # fmt: skip


def watchkeep_process(home: Home, key_type: KeyType, host: str) -> float:
    return wall_time(
        [sys.executable, "-m", "watchkeep", "--home", str(home.root), "cert", "issue",
         "--role", "recording", "--host", host, "--key-type", key_type.value, "--json"]
    )  # fmt: skip


def process_ratios(
    work: Path, runs: int, *, warm: bool
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    home = Home(work / "process")
    SitePKI(home).init_ca("Bench Site CA")
    openssl_dir = work / "openssl"
    openssl_dir.mkdir()
    figures = []
    for key_type in KEY_TYPES:
        prefix = key_type.value
        if warm:  # page cache, .pyc files
            watchkeep_process(home, key_type, f"warm.{prefix}.bench.example")
            openssl_pair(home, key_type, f"warm.{prefix}.openssl.example", openssl_dir)
        ours, theirs = [], []
        for i in range(runs):  # alternate, so that drift in the machine hits both alike
            ours.append(watchkeep_process(home, key_type, f"p{i}.{prefix}.bench.example"))
            theirs.append(
                openssl_pair(home, key_type, f"p{i}.{prefix}.openssl.example", openssl_dir)
            )
        ratio = statistics.median(ours) / statistics.median(theirs)
        figures.append(
            {
                "figure": f"process_wall_time_{key_type.value}",
                "description": f"one `watchkeep cert issue` process ({key_type.value}) vs "
                "`openssl req -new` + `openssl x509 -req`, median wall time",
                "watchkeep_seconds": round(statistics.median(ours), 4),
                "baseline_seconds": round(statistics.median(theirs), 4),
                "runs": runs,
                "ratio": round(ratio, 2),
                "target": f"<= {PROCESS_TARGET}",
                "meets_target": round(ratio, 2) <= PROCESS_TARGET,
            }
        )
    # Where a process's time goes: the interpreter alone, and importing what issuing needs.
    context = {
        "python_startup_seconds": statistics.median(
            wall_time([sys.executable, "-c", "pass"]) for _ in range(runs)
        ),
        "import_watchkeep_pki_seconds": statistics.median(
            wall_time([sys.executable, "-c", "import watchkeep.pki"]) for _ in range(runs)
        ),
    }
    return figures, {k: round(v, 4) for k, v in context.items()}


# -- report -------------------------------------------------------------------------------


def openssl_version() -> str:
    return subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of a second per figure")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pki.json")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WATCHKEEP_BENCH_QUICK") == "1"
    # budget: seconds per rate figure (both loops together); runs: processes per figure
    budget, minimum, runs = (0.2, 2, 1) if quick else (4.0, 10, 5)

    with tempfile.TemporaryDirectory(prefix="watchkeep-bench-") as tmp:
        work = Path(tmp)
        figures = issuance_rates(work, budget, minimum)
        process_figures, context = process_ratios(work, runs, warm=not quick)
    figures += process_figures

    result = {
        "benchmark": "pki",
        "quick": quick,
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "python": platform.python_version(),
            "openssl": openssl_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Other work on the machine skews both sides of a ratio less than the figures.
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "ca_key_type": "rsa-3072",
        "figures": figures,
        "context": context,
    }
    for figure in figures:
        mark = "ok" if figure["meets_target"] else "MISSES TARGET"
        print(
            f"{figure['figure']:<34} ratio {figure['ratio']:>7} (target {figure['target']}) {mark}"
        )
        print(f"    {figure['description']}")
        if "watchkeep_per_second" in figure:
            print(
                f"    watchkeep {figure['watchkeep_per_second']}/s, "
                f"baseline {figure['baseline_per_second']}/s"
            )
        else:
            print(
                f"    watchkeep {figure['watchkeep_seconds']} s, "
                f"baseline {figure['baseline_seconds']} s"
            )
    print(
        f"context: python start-up {context['python_startup_seconds']} s, "
        f"import watchkeep.pki {context['import_watchkeep_pki_seconds']} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
