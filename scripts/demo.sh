#!/usr/bin/env bash
# Set everything up, then run the main job. Extra arguments go to `watchkeep demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHKEEP_EXTRAS=test bash scripts/setup.sh
exec .venv/bin/watchkeep demo "$@"
