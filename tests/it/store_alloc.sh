#!/bin/bash
# store_alloc: the rel store links mimalloc (Makefile ALLOC_PROCS; docs/queue.md
# "Session 11, storesvc"), says at start which allocator it runs on, and its
# exit summary says where its memory is for that allocator, with the resident
# set at exit: mimalloc's committed memory (glibc's mallinfo2 would read empty
# arenas under mimalloc). need_mimalloc: skipped where libmimalloc2.0 is not
# installed, failed if the store no longer links it; the glibc branch below is
# for a store built without it by hand (it reports glibc's arenas).
. "$(dirname "$0")/common.inc" # need_mimalloc; the lib below may redefine the rest
source "$(dirname "$0")/e2e_lib.bash"
need_mimalloc "$BIN/picomdm-store"
if ldd "$BIN/picomdm-store" 2>/dev/null | grep -q 'libmimalloc\.so\.2'; then
    alloc='mimalloc 2[0-9][0-9]'
    heap='mimalloc: [0-9.]+ MB reserved and committed now, peak [1-9][0-9.]* MB'
else
    alloc="the C library's malloc"
    heap='heap now [0-9.]+ MB in use, [0-9.]+ MB free in the arenas'
fi
out=$(timeout 20 "$BIN/picomdm-store" --check --data-dir "$T/chk" 2>&1)
grep -qx 'ok' <<<"$out" || fail "store --check did not say ok: $out"
grep -Eq "allocator: $alloc\$" <<<"$out" || fail "no 'allocator: $alloc' line in store --check: $out"
# the daemon on the bus: the same line, and the allocator's figures at exit
gw_broker
gw_store
log_has store.log "allocator: $alloc" || fail "the store did not log its allocator ($alloc)"
kill -TERM "$STORE_PID"
s_store_gone() { ! kill -0 "$STORE_PID" 2>/dev/null; }
wait_for 20 "the store to stop" s_store_gone
line=$(grep 'memory: peak RSS' "$T/store.log")
[ -n "$line" ] || fail "the store logged no memory line at exit"
grep -Eq 'peak RSS [1-9][0-9.]* MB, now [1-9][0-9.]* MB' <<<"$line" || fail "no resident set now in: $line"
grep -Eq "$heap" <<<"$line" || fail "the exit summary does not give the allocator's memory ($heap): $line"
grep -Eq 'SQLite page cache [0-9.]+ MB' <<<"$line" || fail "no SQLite page cache in: $line"
echo "ok: the store reports its allocator ($alloc) and its memory ($line)"
