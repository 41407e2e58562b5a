#!/bin/bash
# deploy_notify: every daemon that calls pm_notify_ready() tells a real
# NOTIFY_SOCKET "READY=1" once it serves, when started the way its systemd unit
# starts it (--config FILE, NOTIFY_SOCKET set), and exits 0 on SIGTERM (sending
# STOPPING=1 first if it calls pm_notify_stopping()). A daemon that never calls
# pm_notify_ready() fails the test. Per-process settings are in the config below.
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${BIN:-$PWD/bin}
tmp=$(mktemp -d /tmp/pm_notify.XXXXXX)
pids=()
cleanup() {
    for p in ${pids[@]+"${pids[@]}"}; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

if ! command -v nm >/dev/null || ! command -v python3 >/dev/null; then
    echo "skip: needs nm (binutils) and python3 (make deps)"
    exit 77
fi
wired=() unwired=()
for p in broker store scheduler pusher ca gateway; do
    b=$BIN/picomdm-$p
    [ -x "$b" ] || continue
    if nm "$b" 2>/dev/null | grep -q ' T pm_notify_ready$'; then wired+=("$p"); else unwired+=("$p"); fi
done
echo "wired: ${wired[*]:-none}; not wired: ${unwired[*]:-none}"
if [ ${#unwired[@]} != 0 ]; then
    echo "FAIL: ${unwired[*]} never call pm_notify_ready(): their Type=notify units would time out (docs/deploy.md section 7 says where the call goes)"
    exit 1
fi

# a free loopback port for the gateway
port=0
for _ in $(seq 50); do
    c=$((20000 + RANDOM % 12000))
    ss -ltn 2>/dev/null | grep -q ":$c " || { port=$c; break; }
done
mkdir -p "$tmp/run" "$tmp/data" "$tmp/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -keyout "$tmp/pki/tls.key" -out "$tmp/pki/tls.crt" >/dev/null 2>&1
cat >"$tmp/picomdm.cfg" <<EOF
request-endpoint = "ipc://$tmp/run/request"
publish-endpoint = "ipc://$tmp/run/publish"
subscribe-endpoint = "ipc://$tmp/run/subscribe"
data-dir = "$tmp/data"
device-ca = "$tmp/pki/tls.crt"
broker
    run-dir = "$tmp/run"
gateway
    listen = "127.0.0.1:$port"
    tls-cert = "$tmp/pki/tls.crt"
    tls-key = "$tmp/pki/tls.key"
EOF

# listen.py SOCKET OUT: append every datagram received on SOCKET to OUT (killed at exit)
cat >"$tmp/listen.py" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(0.5)
end = time.time() + 180
with open(sys.argv[2], "a") as out:
    while time.time() < end:
        try:
            d = s.recv(4096)
        except socket.timeout:
            continue
        out.write(d.decode(errors="replace") + "\n")
        out.flush()
EOF

wait_for() { # file pattern seconds (wall clock, however loaded the machine is)
    local end=$((SECONDS + $3))
    while [ $SECONDS -lt $end ]; do
        grep -qx "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    grep -qx "$2" "$1" 2>/dev/null
}

fails=0
broker_pid=
declare -A pid_of
# the broker first (the others need it), wired or not
if [[ " ${unwired[*]:-} " == *" broker "* ]]; then
    "$BIN/picomdm-broker" --config "$tmp/picomdm.cfg" >"$tmp/broker.log" 2>&1 &
    broker_pid=$!
    pids+=("$broker_pid")
fi
for p in "${wired[@]}"; do
    sock=$tmp/notify-$p out=$tmp/notify-$p.txt
    : >"$out"
    python3 "$tmp/listen.py" "$sock" "$out" &
    pids+=($!)
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.1; done
    start=$(date +%s%N)
    NOTIFY_SOCKET=$sock "$BIN/picomdm-$p" --config "$tmp/picomdm.cfg" >"$tmp/$p.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    pid_of[$p]=$pid
    if wait_for "$out" READY=1 15; then
        echo "ok: $p sent READY=1 after $((($(date +%s%N) - start) / 1000000)) ms"
    else
        echo "FAIL: $p sent no READY=1 within 15 s (got: $(tr '\n' ' ' <"$out")); its log:"
        tail -5 "$tmp/$p.log" | sed 's/^/    /'
        fails=$((fails + 1))
    fi
done
# stop in reverse order, the broker last; each must exit 0 within 10 s
order=()
for ((i = ${#wired[@]} - 1; i >= 0; i--)); do [ "${wired[$i]}" = broker ] || order+=("${wired[$i]}"); done
[[ " ${wired[*]} " == *" broker "* ]] && order+=(broker)
for p in "${order[@]}"; do
    pid=${pid_of[$p]}
    if ! kill -TERM "$pid" 2>/dev/null; then
        wait "$pid"
        echo "FAIL: $p had already exited (status $?) before SIGTERM"
        fails=$((fails + 1))
        continue
    fi
    rc=
    end=$((SECONDS + 10))
    while [ $SECONDS -lt $end ]; do kill -0 "$pid" 2>/dev/null || { wait "$pid"; rc=$?; break; }; sleep 0.1; done
    if [ -z "$rc" ]; then
        echo "FAIL: $p still running 10 s after SIGTERM"
        fails=$((fails + 1))
    elif [ "$rc" != 0 ]; then
        echo "FAIL: $p exited $rc on SIGTERM"
        fails=$((fails + 1))
    fi
    if nm "$BIN/picomdm-$p" | grep -q ' T pm_notify_stopping$'; then
        if wait_for "$tmp/notify-$p.txt" STOPPING=1 5; then
            echo "ok: $p sent STOPPING=1 and exited ${rc:-?}"
        else
            echo "FAIL: $p calls pm_notify_stopping but sent no STOPPING=1 (got: $(tr '\n' ' ' <"$tmp/notify-$p.txt")); its log:"
            tail -3 "$tmp/$p.log" | sed 's/^/    /'
            fails=$((fails + 1))
        fi
    fi
done
if [[ " ${unwired[*]:-} " == *" broker "* ]]; then
    kill -TERM "$broker_pid"
    for _ in $(seq 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
fi
if [ $fails != 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "deploy_notify: ${#wired[@]} daemon(s) announce readiness"
