"""`python -m bench [--quick]`: the stream benchmarks (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
