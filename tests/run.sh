#!/bin/bash
# PicoMDM test runner: every unit test (build/rel/test/*), every integration
# test (tests/it/*.sh), the unit tests again under ASan+UBSan
# (build/asan/test/*), and a short smoke run of each libFuzzer target.
#
#   tests/run.sh             run everything
#   tests/run.sh NAME...     run the tests with these names (pm_msg, broker,
#                            asan:pm_msg, fuzz:msg ...)
#   tests/run.sh --list      list the test names
#
# An integration test exits 0 (pass), 77 (skipped, with the reason printed)
# or anything else (fail). Logs: build/test-logs/<name>.log.
# The last line is the summary: "N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.."
LOGS=build/test-logs
mkdir -p "$LOGS"
export PICOMDM_ROOT=$PWD BIN=$PWD/bin TT=$PWD/build/rel/tt
FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-10}

declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
for t in build/rel/test/*; do [ -x "$t" ] && add "$(basename "$t")" "$t"; done
for t in tests/it/*.sh; do [ -f "$t" ] && add "$(basename "$t" .sh)" "timeout 600 bash $t"; done
for t in build/asan/test/*; do [ -x "$t" ] && add "asan:$(basename "$t")" "$t"; done
for t in build/fuzz/fuzz_*; do
    [ -x "$t" ] || continue
    n=${t##*/fuzz_}
    # new inputs go to a scratch corpus; the committed seeds are only read.
    # libFuzzer exits 77 on a crash by default, which would count as a skip here.
    mkdir -p "build/fuzz/corpus/$n"
    add "fuzz:$n" "$t -max_total_time=$FUZZ_SMOKE_SECONDS -rss_limit_mb=2048 -error_exitcode=1 -timeout_exitcode=1 build/fuzz/corpus/$n tests/fuzz/corpus/$n"
done

if [ "${1:-}" = "--list" ]; then printf '%s\n' "${names[@]}"; exit 0; fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
pass=0 fail=0 skip=0 failed=()
for i in "${!names[@]}"; do
    n=${names[$i]}
    if [ $# -gt 0 ]; then
        want=0
        for a in "$@"; do [ "$a" = "$n" ] && want=1; done
        [ $want = 1 ] || continue
    fi
    log="$LOGS/${n//:/_}.log"
    start=$(date +%s%N)
    bash -c "${cmds[$i]}" >"$log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000)); secs=$((ms / 1000)).$((ms % 1000 / 100))
    if [ $rc = 0 ]; then
        pass=$((pass + 1)); echo "PASS  $n (${secs}s)"
    elif [ $rc = 77 ]; then
        skip=$((skip + 1)); echo "SKIP  $n: $(tail -n 1 "$log")"
    else
        fail=$((fail + 1)); failed+=("$n"); echo "FAIL  $n (exit $rc, ${secs}s) — last lines of $log:"
        tail -n 25 "$log" | sed 's/^/      /'
    fi
done
if [ $((pass + fail + skip)) = 0 ]; then echo "no test matched: $* (see tests/run.sh --list)"; echo "0 passed, 1 failed"; exit 1; fi
[ $fail = 0 ] || echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail = 0 ]
