#!/usr/bin/env bash
# The stream benchmarks (issue 6): set up (the `bench` extra, and Debian's nginx, pinned in
# requirements/debian.txt, as the baseline), then run them. Results: a table here, and
# bench/results/stream.json, stream.md and stream.png.
#   bash scripts/bench.sh            full run, about 12 minutes
#   bash scripts/bench.sh --quick    smallest size, about a minute (the smoke test's)
# Other arguments go to `python -m bench` (bench/run.py: --only, --out-dir, --profile N).
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHKEEP_EXTRAS=${WATCHKEEP_EXTRAS:-test,dev,bench} bash scripts/setup.sh
exec .venv/bin/python -m bench "$@"
