#!/usr/bin/env bash
# Run every benchmark script in sequence and print their output (used for docs/benchmarks.md).
# Usage: bash benchmarks/run_all.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for b in bench_forward bench_attribution bench_patching bench_curve bench_memory; do
  echo "## python benchmarks/$b.py $*"
  python "benchmarks/$b.py" "$@"
done
echo "## python benchmarks/bench_planted.py"
python benchmarks/bench_planted.py
echo "# done; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
