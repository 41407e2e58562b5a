#!/bin/bash
# store_alloc: the rel store links mimalloc (Makefile ALLOC_PROCS; docs/queue.md
# "Session 10, storecpu5": fewer instructions per device request), says so at
# start, and its exit summary reports mimalloc's committed memory (glibc's
# mallinfo2 would read empty arenas under mimalloc).
source "$(dirname "$0")/e2e_lib.bash"
ldd "$BIN/picomdm-store" 2>/dev/null | grep -q 'libmimalloc\.so\.2' ||
    skip "skipped: this build of picomdm-store does not link mimalloc (libmimalloc2.0 not installed, or not a rel build)"
out=$(timeout 20 "$BIN/picomdm-store" --check --data-dir "$T/chk" 2>&1)
grep -qx 'ok' <<<"$out" || fail "store --check did not say ok: $out"
grep -Eq 'allocator: mimalloc 2[0-9]{2}$' <<<"$out" ||
    fail "no 'allocator: mimalloc 2xx' line in store --check: $out"
# the daemon on the bus: the same line, and mimalloc's figures at exit
gw_broker
gw_store
log_has store.log 'allocator: mimalloc 2[0-9][0-9]' || fail "the store did not log its allocator"
kill -TERM "$STORE_PID"
s_store_gone() { ! kill -0 "$STORE_PID" 2>/dev/null; }
wait_for 20 "the store to stop" s_store_gone
line=$(grep 'memory: peak RSS' "$T/store.log")
[ -n "$line" ] || fail "the store logged no memory line at exit"
# a running store has committed some memory: the figure is mimalloc's, not 0
peak=$(sed -n 's/.*mimalloc: [0-9.]* MB committed now, peak \([0-9.]*\) MB.*/\1/p' <<<"$line")
[ -n "$peak" ] || fail "the exit summary does not give mimalloc's committed memory: $line"
awk -v p="$peak" 'BEGIN { exit !(p > 0) }' || fail "mimalloc's peak committed memory is 0: $line"
echo "ok: the store links mimalloc and reports its memory ($line)"
