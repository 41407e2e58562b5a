#!/bin/bash
# cli_up — `picomdm up` supervises: it starts every process it finds, makes
# the CA and TLS certificate once (keys 0600) and reuses them, restarts a
# killed process, refuses a second supervisor on the same data directory,
# stops everything on SIGTERM (SIGKILL for a process that ignores SIGTERM)
# and exits 0. Part 1 uses stand-in programs (so it tests the supervisor
# alone); part 2 runs the real processes when they are built and checks that
# they answer on the bus.
set -u
BIN=${BIN:-$PWD/bin}
T=$(mktemp -d /tmp/cli_up.XXXXXX)
UP_PID=
cleanup() {
    [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && sleep 0.5 && kill -KILL "$UP_PID" 2>/dev/null
    for f in "$T"/var*/run/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- up log:"; tail -n 40 "$T/up.log" 2>/dev/null; exit 1; }
[ -x "$BIN/picomdm" ] || { echo "bin/picomdm is not built (run make)"; exit 77; }

# wait_for SECONDS COMMAND...: poll until the command succeeds
. "$(dirname "$0")/common.inc"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---- part 1: stand-in processes ----
mkdir -p "$T/fake"
for n in broker store scheduler gateway pusher; do
    cat >"$T/fake/picomdm-$n" <<'EOF'
#!/bin/bash
name=${0##*/}
if [ "$name" = picomdm-pusher ]; then trap 'echo "$name: ignoring TERM"' TERM
else trap 'echo "$name: TERM"; exit 0' TERM; fi
echo "$name: args $*" >>"$(dirname "$0")/args.log"
if [ "$name" = picomdm-broker ]; then
    sock=$(sed -n 's|^request-endpoint = "ipc://\(.*\)"$|\1|p' "$2"); : >"$sock"
fi
while :; do sleep 0.1; done
EOF
    chmod +x "$T/fake/picomdm-$n"
done
start_up() {  # start_up DATA_DIR [more options]
    local data=$1; shift
    "$BIN/picomdm" up --data-dir "$data" --bin-dir "$T/fake" --stop-timeout 2000 "$@" >"$T/up.log" 2>&1 &
    UP_PID=$!
}
start_up "$T/var"
for n in broker store scheduler gateway pusher; do
    wait_for 10 alive "$T/var/run/$n.pid" || fail "$n was not started"
done
grep -q "picomdm-store: args --config $T/var/run/picomdm.cfg" "$T/fake/args.log" || fail "store did not get --config"
grep -q "^request-endpoint = \"ipc://$T/var/run/request.sock\"" "$T/var/run/picomdm.cfg" || fail "config lacks the request endpoint"
[ "$(stat -c %a "$T/var/pki/ca.key")" = 600 ] || fail "ca.key is not 0600"
[ "$(stat -c %a "$T/var/pki/tls.key")" = 600 ] || fail "tls.key is not 0600"
openssl x509 -in "$T/var/pki/tls.crt" -noout -ext subjectAltName | grep -q "IP Address:127.0.0.1" || fail "TLS SAN lacks 127.0.0.1"
grep -q "created now" "$T/up.log" || fail "banner does not say the certificates were created"
grep -q "NOTICE: no APNs push certificate" "$T/up.log" || fail "no push-certificate notice"
grep -q "ServerURL        https://localhost:8443/mdm/connect" "$T/up.log" || fail "no ServerURL in the banner"
fp1=$(openssl x509 -in "$T/var/pki/ca.crt" -noout -fingerprint -sha256)

# a killed process is restarted (new pid), and the restart is logged
old=$(cat "$T/var/run/store.pid")
kill -KILL "$old"
wait_for 10 bash -c "[ -f '$T/var/run/store.pid' ] && [ \"\$(cat '$T/var/run/store.pid')\" != $old ] && kill -0 \$(cat '$T/var/run/store.pid')" || fail "store was not restarted"
grep -q "store (pid $old) was killed by signal 9.*restarting" "$T/up.log" || fail "restart not logged"

# a second supervisor on the same data directory is refused
"$BIN/picomdm" up --data-dir "$T/var" --bin-dir "$T/fake" >"$T/second.log" 2>&1
rc=$?
[ $rc != 0 ] && grep -q "already running" "$T/second.log" || fail "second up: rc=$rc, $(cat "$T/second.log")"

# SIGTERM stops all (the pusher stand-in ignores SIGTERM: SIGKILL after --stop-timeout)
pids=$(cat "$T"/var/run/*.pid)
kill -TERM "$UP_PID"
wait_for 15 bash -c "! kill -0 $UP_PID 2>/dev/null" || fail "up did not exit after SIGTERM"
wait "$UP_PID"; rc=$?; UP_PID=
[ $rc = 0 ] || fail "up exited $rc after SIGTERM, want 0"
for p in $pids; do kill -0 "$p" 2>/dev/null && fail "process $p still alive after up stopped"; done
grep -q "pusher (pid [0-9]*) did not stop after SIGTERM; sending SIGKILL" "$T/up.log" || fail "no SIGKILL escalation logged"
ls "$T"/var/run/*.pid >/dev/null 2>&1 && fail "pid files left behind"

# second start: the certificates are reused; --tls-client-cert turns the
# gateway's request for client certificates back on in the generated config
start_up "$T/var" --only broker,store --tls-client-cert
wait_for 10 alive "$T/var/run/store.pid" || fail "second start: store not started"
[ -f "$T/var/run/scheduler.pid" ] && fail "--only started the scheduler"
grep -q "(reused)" "$T/up.log" || fail "second start did not reuse the certificates"
[ "$(openssl x509 -in "$T/var/pki/ca.crt" -noout -fingerprint -sha256)" = "$fp1" ] || fail "the CA changed"
grep -q "^    tls-client-cert = true$" "$T/var/run/picomdm.cfg" || fail "--tls-client-cert is not in the config"
kill -TERM "$UP_PID"; wait "$UP_PID"; rc=$?; UP_PID=
[ $rc = 0 ] || fail "second up exited $rc"
echo "part 1 (stand-ins): ok"

# ---- part 2: the real processes, when built ----
for n in broker store scheduler; do
    if [ ! -x "$BIN/picomdm-$n" ]; then echo "part 2 skipped: $BIN/picomdm-$n not built yet"; exit 0; fi
done
port=$(free_port) || fail "no free port"
"$BIN/picomdm" up --data-dir "$T/var2" --listen "127.0.0.1:$port" --stop-timeout 5000 >"$T/up.log" 2>&1 &
UP_PID=$!
export PICOMDM_CONFIG=$T/var2/run/picomdm.cfg
wait_for 15 "$BIN/picomdm" devices --timeout 1000 --retries 0 >/dev/null 2>&1 || fail "the scheduler does not answer picomdm devices"
# the gateway asks devices for no TLS client certificate (our profiles sign
# every message: tls-client-cert = false unless `up --tls-client-cert`)
grep -q "^    tls-client-cert = false$" "$T/var2/run/picomdm.cfg" || fail "config does not turn tls-client-cert off"
if [ -x "$BIN/picomdm-gateway" ]; then
    # -msg lists the handshake messages: no CertificateRequest at all
    sc() { openssl s_client -msg -connect "127.0.0.1:$port" -servername localhost </dev/null 2>&1; }
    wait_for 15 bash -c "openssl s_client -connect 127.0.0.1:$port </dev/null 2>&1 | grep -q CONNECTED" || fail "the gateway does not accept TLS"
    out=$(sc)
    echo "$out" | grep -q "Handshake .*Finished" || fail "no handshake seen: $(echo "$out" | tail -3)"
    echo "$out" | grep -q "CertificateRequest" && fail "the gateway asked for a client certificate"
fi
# kill the scheduler: it is restarted and answers again
old=$(cat "$T/var2/run/scheduler.pid")
kill -KILL "$old"
wait_for 15 bash -c "[ -f '$T/var2/run/scheduler.pid' ] && [ \"\$(cat '$T/var2/run/scheduler.pid')\" != $old ]" || fail "scheduler not restarted"
wait_for 15 "$BIN/picomdm" devices --timeout 1000 --retries 0 >/dev/null 2>&1 || fail "no answer after the scheduler restart"
pids=$(cat "$T"/var2/run/*.pid)
kill -TERM "$UP_PID"; wait "$UP_PID"; rc=$?; UP_PID=
[ $rc = 0 ] || fail "up (real processes) exited $rc"
for p in $pids; do kill -0 "$p" 2>/dev/null && fail "real process $p still alive"; done
echo "part 2 (real processes): ok"
exit 0
