#!/bin/bash
# devsim_warm — the simulator's --warm-connections against the real server
# (TLS gateway, broker, store, scheduler): before a phase, one GET of the
# ServerURL per transfer slot, all at once, opens --concurrency connections
# (a TLS handshake each) that the phase's requests then reuse; none of it is
# in the phase's figures. 150 devices enroll (closed loop, concurrency 8,
# warm), then run one session each in an open loop at 100 sessions/s with 12
# transfer slots, warm and then cold. Asserts: the warm-up line says 8 (12)
# connections opened by as many GETs, all answered (the gateway's 405); the
# warm phases opened no connection of their own; their requests, latencies
# and latency log hold the devices' requests only (2 per session, no GET);
# every enrollment and session completed without errors; the cold open loop
# opened its own connections (so the count above is not always 0); idle
# warm connections closed by the server do not make the simulator spin.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
N=150
e2e_up --log-level warn
DS=(devsim_fleet $N 4343 10000)
ok() { grep -q 'http errors 0, transport errors 0, bad replies 0' "$T/$1.out" || fail "$1: errors: $(tail -n 1 "$T/$1.out")"; }
# warm NAME PHASE K: the warm-up line of PHASE says K connections by K GETs, K answered with 405
warm() {
    local l
    l=$(grep "^$2 *warm-up (--warm-connections" "$T/$1.out") || fail "$1: no warm-up line for $2"
    echo "$1: $l"
    [[ $l == *": $3 connections opened (TLS handshakes) by $3 GET requests of the ServerURL sent at once, $3 answered (last HTTP 405)"* ]] ||
        fail "$1: expected $3 connections opened by $3 answered GETs: $l"
}
# conns NAME PHASE: the connections the phase itself opened
conns() { grep -m1 "^$2 *connections opened (TLS handshakes): " "$T/$1.out" | sed 's/.*handshakes): \([0-9]*\) .*/\1/'; }

"${DS[@]}" --rounds 0 --concurrency 8 --warm-connections >"$T/enroll.out" 2>&1 ||
    { cat "$T/enroll.out"; fail "enrollment of $N devices failed"; }
grep -E '^enroll' "$T/enroll.out"
grep -q "^enroll *$N enrollments in .*; $((2 * N)) requests, .*; 0 failed$" "$T/enroll.out" ||
    fail "not all $N devices enrolled with 2 requests each (the GETs must not count)"
ok enroll
warm enroll enroll 8
[ "$(conns enroll enroll)" = 0 ] || fail "the warm enrollment phase opened $(conns enroll enroll) connections of its own (expected 0)"
cli devices --limit 1000 | awk 'NR > 1 { print $1 }' >"$T/eids"
[ "$(wc -l <"$T/eids")" -eq $N ] || fail "expected $N enrollments, got $(wc -l <"$T/eids")"

# session NAME ARGS...: one session per device in an open loop at 100/s, 12 slots
session() {
    local name=$1
    shift
    cli enqueue DeviceInformation --no-push --set Queries=OSVersion --to "$(paste -sd, "$T/eids")" \
        >/dev/null || fail "enqueue failed"
    "${DS[@]}" --no-enroll --rounds 1 --rate 100 --concurrency 12 --latency-log "$T/$name.lat" "$@" \
        >"$T/$name.out" 2>&1 || { cat "$T/$name.out"; fail "devsim $name failed"; }
    grep -E '^session' "$T/$name.out" | sed "s/^/$name: /"
    grep -q "^session 1 * $N sessions in .*, $N command round trips.*; $((2 * N)) requests, .*; 0 failed$" "$T/$name.out" ||
        fail "$name: not all $N sessions completed with their command in $((2 * N)) requests"
    grep -q "^session 1 *open loop: offered 100.0 sessions/s" "$T/$name.out" || fail "$name: no open-loop line"
    ok "$name"
    [ "$(wc -l <"$T/$name.lat")" -eq $((2 * N)) ] ||
        fail "$name: the latency log has $(wc -l <"$T/$name.lat") lines, expected $((2 * N)) (the devices' requests only)"
}
session warm --warm-connections
warm warm "session 1" 12
[ "$(conns warm 'session 1')" = 0 ] || fail "the warm open loop opened $(conns warm 'session 1') connections of its own (expected 0)"
session cold
grep -q 'warm-up' "$T/cold.out" && fail "a warm-up without --warm-connections"
c=$(conns cold 'session 1')
[ -n "$c" ] && [ "$c" -ge 1 ] || fail "the cold open loop opened ${c:-no} connections (expected at least 1)"
# Idle kept connections closed by the server: a second gateway on the same
# back end with a 1 s idle timeout; 10 of the devices, one session each at 2
# sessions/s on 4 warm connections, so that the connections curl does not
# reuse idle past the timeout and the gateway closes them while they sit in
# the simulator's epoll (docs/devsim.md: sockets stay registered between
# requests). The loop must take them out rather than wake for them again
# and again: every session completes, and the phase (~5 s, 20 requests)
# costs the simulator under 0.2 s of CPU (~0.02 s measured; a build that
# left the closed sockets in epoll spent 0.57 s).
gw_tls --log-level warn --idle-timeout 1
cli enqueue DeviceInformation --no-push --set Queries=OSVersion --to "$(paste -sd, "$T/eids")" \
    >/dev/null || fail "enqueue failed"
devsim_fleet 10 4343 10000 --no-enroll --rounds 1 --rate 2 --concurrency 4 --warm-connections >"$T/idle.out" 2>&1 ||
    { cat "$T/idle.out"; fail "devsim against the gateway with a 1 s idle timeout failed"; }
grep -E '^(session|devsim +session)' "$T/idle.out" | sed 's/^/idle: /'
grep -q "^session 1 * 10 sessions in .*, 10 command round trips.*; 20 requests, .*; 0 failed$" "$T/idle.out" ||
    fail "idle: not all 10 sessions completed with their command"
ok idle
warm idle "session 1" 4
cpu=$(awk '/^devsim +session 1: cpu user/ { print $6 + $9 }' "$T/idle.out")
echo "idle: simulator CPU in the phase ${cpu:-?} s"
awk -v c="${cpu:-9}" 'BEGIN { exit !(c < 0.2) }' ||
    fail "idle: the simulator spent ${cpu:-?} s of CPU in a ~5 s phase of 20 requests (woken by closed idle sockets?)"
echo "devsim_warm: all checks passed"
