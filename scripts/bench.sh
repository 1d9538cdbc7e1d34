#!/usr/bin/env bash
# The stream benchmarks (issue 6): set up (the `bench` extra, and Debian's nginx, pinned in
# requirements/debian.txt, as the baseline), then run them. Results: a table here, and
# bench/results/stream.json, stream.md and stream.png.
#   bash scripts/bench.sh            full run, about 12 minutes
#   bash scripts/bench.sh --quick    smallest size, about a minute (the smoke test's)
#   bash scripts/bench.sh h264 [--quick]   the H.264 capacity search (issue 15), encrypted and
#                                          in plaintext: bench/results/h264.json and h264.md
# Other arguments go to `python -m bench` (bench/run.py: --only, --out-dir, --profile N) or,
# after `h264`, to `python -m bench.h264_capacity` (--steps, --modes, --out-dir, --profile N,
# --perf N: Linux perf on rs1, its CPU per picture by part).
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHKEEP_EXTRAS=${WATCHKEEP_EXTRAS:-test,dev,bench} bash scripts/setup.sh
if [ "${1:-}" = h264 ]; then
    shift
    exec .venv/bin/python -m bench.h264_capacity "$@"
fi
exec .venv/bin/python -m bench "$@"
