#!/bin/bash
# make bench: runs every tests/bench/*.sh in order. Each prints its own figures
# (rates, latency percentiles, CPU, RSS). Benchmarks report; they do not pass or fail
# on speed (a benchmark that cannot run at all exits non-zero).
set -u
cd "$(dirname "$0")/.."
export PICOMDM_ROOT=$PWD BIN=$PWD/bin TT=$PWD/build/rel/tt
rc=0
for b in tests/bench/*.sh; do
    [ -f "$b" ] || continue
    echo "=== $(basename "$b" .sh)"
    bash "$b" || { echo "bench $(basename "$b" .sh) could not run"; rc=1; }
done
exit $rc
