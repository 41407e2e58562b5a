#!/bin/bash
# --cpu N: every thread of the broker (its loop and libzmq's I/O thread) runs
# on CPU N only, and requests still go through; a CPU it may not use is a
# clear start-up error (exit 1), a negative one other than -1 a usage error.
. "$(dirname "$0")/broker_lib.bash"
cpu=$(taskset -cp $$ | awk -F': ' '{ print $2 }' | cut -d, -f1 | cut -d- -f1)
[ -n "$cpu" ] || { echo "skip: cannot read this shell's CPU list with taskset"; exit 77; }
start_broker broker --cpu "$cpu"
n=0
for t in /proc/"$BROKER"/task/*; do
    [ "$(awk '/^Cpus_allowed_list/ { print $2 }' "$t/status")" = "$cpu" ] ||
        fail "thread $(basename "$t") may run on $(awk '/^Cpus_allowed_list/ { print $2 }' "$t/status"), not only $cpu"
    n=$((n + 1))
done
[ "$n" -ge 2 ] || fail "expected the broker's loop and libzmq's I/O thread, saw $n thread(s)"
grep -q "broker threads pinned to CPU $cpu" "$D/broker.log" || fail "no 'pinned' line in the log"
start_worker w1
timeout 30 "$TT/bustest" client --endpoint "$REQ" --count 200 --inflight 8 >"$D/client.out" 2>&1 ||
    { cat "$D/client.out"; fail "requests through the pinned broker failed"; }

# a CPU outside the allowed set: refused at start
bad=$(($(getconf _NPROCESSORS_CONF) + 64))
timeout 10 "$BIN/picomdm-broker" --request-endpoint "ipc://$D/r2" --publish-endpoint "ipc://$D/p2" \
    --subscribe-endpoint "ipc://$D/s2" --cpu "$bad" >"$D/bad.log" 2>&1
rc=$?
[ $rc = 1 ] || fail "--cpu $bad: exit $rc, expected 1"
grep -q -- "--cpu $bad: cannot run there" "$D/bad.log" || fail "--cpu $bad: no clear error: $(cat "$D/bad.log")"
timeout 10 "$BIN/picomdm-broker" --cpu -2 >"$D/neg.log" 2>&1
rc=$?
[ $rc = 1 ] || [ $rc = 2 ] || fail "--cpu -2: exit $rc, expected a usage error"
grep -q "cpu a CPU number or -1" "$D/neg.log" || fail "--cpu -2: no clear error: $(cat "$D/neg.log")"
echo "PASS: --cpu $cpu pins all $n broker threads and requests flow; bad CPUs are refused"
