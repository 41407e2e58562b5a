#!/bin/bash
# The store's checkpoint thread (--checkpoint thread, store/store_ckpt.h):
# 1. a burst of 6,000 enqueues with a tiny checkpoint interval (100 pages, so
#    the thread checkpoints every few batches), the store killed with -9 while
#    the thread is at work (after its 3rd checkpoint), then restarted: every
#    enqueue that got a reply is in the queue exactly once — no commit lost
#    across a crash during a checkpoint;
# 2. the WAL stays bounded: at exit the store reports checkpoints by the
#    thread, the WAL started over, and never held more than twice the cap
#    and one batch (4 x 100 frames; unbounded it would reach ~13,000); after the burst and an idle pause the -wal file is no
#    larger than journal_size_limit allows.
. "$(dirname "$0")/queue_lib.bash"
COUNT=6000
PAGES=100                       # --wal-autocheckpoint: the thread's interval
CAP=$((4 * PAGES))              # STORE_CKPT_CAP_FACTOR x that
STORE_ARGS=(--wal-autocheckpoint $PAGES --checkpoint-idle-ms 200 --log-level debug)
start_all
grep -q "checkpoints thread every $PAGES pages" "$D/store.log" || fail "the store did not start with the checkpoint thread"
drv enroll --n 1 >"$D/enroll.out" 2>"$D/enroll.log" || fail "enroll failed"
drv enqueue-many --count $COUNT --eid dev-0 --log "$D/enq.txt" --window 32 \
    --timeout-ms 1000 --retries 30 >"$D/many.out" 2>"$D/many.log" &
DRV=$!
PIDS+=($DRV)
wait_log store "checkpoint: [0-9]* of [0-9]* WAL frames" 3 30
before=$(wc -l <"$D/enq.txt")
[ "$before" -lt $COUNT ] || fail "all enqueues finished before the kill; the test proves nothing"
kill -9 "$STORE_PID"
wait "$STORE_PID" 2>/dev/null
echo "killed the store during the burst after $before replies and $(grep -c 'checkpoint: ' "$D/store.log") checkpoints"
start_store "${STORE_ARGS[@]}"
burst_all_present

# idle: the thread copies the rest; the -wal file stays within the limit
sleep 1
wal=$(stat -c %s "$D/data/picomdm.db-wal" 2>/dev/null || echo 0)
limit=$((2 * CAP * 4120 + 32)) # frames of 4 KiB + 24-byte headers; twice the cap: overshoot while the thread is busy
echo "after the burst: -wal file $wal bytes (limit $limit)"
[ "$wal" -le "$limit" ] || fail "the -wal file is $wal bytes after the burst, more than $limit: the WAL is not bounded"
kill "$STORE_PID"
wait "$STORE_PID" 2>/dev/null
line=$(grep "WAL: " "$D/store.log" | tail -n 1)
[ -n "$line" ] || fail "the store did not log its WAL summary at exit"
echo "store: ${line#*largest batch}"
ckpts=$(sed -n 's/.*WAL: \([0-9]*\) checkpoints.*/\1/p' <<<"$line")
restarts=$(sed -n 's/.*started over \([0-9]*\) times.*/\1/p' <<<"$line")
most=$(sed -n 's/.*at most \([0-9]*\) frames.*/\1/p' <<<"$line")
[ "${ckpts:-0}" -ge 3 ] || fail "only ${ckpts:-0} checkpoints by the thread after the restart"
[ "${restarts:-0}" -ge 1 ] || fail "the WAL never started over"
# unbounded it would hold every frame of the burst (~13,000). The design's
# bound (store/store_ckpt.h) is twice the cap and one batch: the batch that
# takes it over twice the cap while the thread's checkpoint still runs (a
# batch here is at most the driver's 32 enqueues, well under half the cap;
# a loaded machine showed 819 frames, 19 over twice the cap)
[ "${most:-999999}" -le $((2 * CAP + CAP / 2)) ] ||
    fail "the WAL held $most frames, more than twice the cap $CAP and one batch"
echo "ok: $COUNT enqueues, store killed during checkpoints after $before, all present exactly once; WAL bounded"
