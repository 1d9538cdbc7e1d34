"""watchkeep's benchmarks (issue 6): what encryption costs, how many cameras one recording
server carries, against baselines measured in the same run. `bash scripts/bench.sh` runs
them; `bench/run.py` is the orchestrator, the other modules are its load generators."""
