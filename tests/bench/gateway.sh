#!/bin/bash
# gateway benchmark (figures, not pass/fail): the gateway over TLS in front of
# the real back end (broker, store, scheduler); W client processes with keep-alive send
# signed command-loop requests (Idle, pre-signed per device: the signature
# is checked in full on every request) for S seconds. Prints requests/s,
# latency percentiles, and the gateway's CPU time and peak RSS.
#   tests/bench/gateway.sh [SECONDS] [WORKERS]
cd "$(dirname "$0")/../.."
export BIN=${BIN:-$PWD/bin} TT=${TT:-$PWD/build/rel/tt}
SECS=${1:-5}
WORKERS=${2:-4}
source tests/it/e2e_lib.bash
command -v python3 >/dev/null || skip "skipped: python3 not installed"
gw_pki
gw_broker
gw_backend
gw_tls --log-level warn
for i in $(seq 1 $WORKERS); do
    gw_devcert bench$i # each device its own identity (the store binds it)
    plist MessageType Authenticate UDID BENCH-$i Topic t >"$T/a$i"
    [ "$(put /mdm/checkin "$T/a$i" bench$i)" = 200 ] || fail "Authenticate BENCH-$i"
    plist MessageType TokenUpdate UDID BENCH-$i Topic t Token data:AAEC PushMagic PM >"$T/t$i"
    [ "$(put /mdm/checkin "$T/t$i" bench$i)" = 200 ] || fail "TokenUpdate BENCH-$i"
    plist Status Idle UDID BENCH-$i >"$T/i$i"
    sign "$T/i$i" bench$i >"$T/s$i"
done
cpu0=$(awk '{print $14 + $15}' /proc/$GW_PID/stat)
python3 - "$PORT" "$PKI/ca.pem" "$T" "$WORKERS" "$SECS" <<'PY'
import http.client, ssl, sys, time, multiprocessing as mp
port, ca, T, W, S = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
def run(i, q):
    ctx = ssl.create_default_context(cafile=ca)
    body = open(f"{T}/i{i}", "rb").read(); sig = open(f"{T}/s{i}").read().strip()
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    lat, errs, end = [], 0, time.time() + S
    while time.time() < end:
        t = time.perf_counter()
        c.request("PUT", "/mdm/connect", body=body, headers={"Mdm-Signature": sig})
        r = c.getresponse(); r.read()
        lat.append(time.perf_counter() - t)
        if r.status != 200: errs += 1
    q.put((lat, errs))
q = mp.Queue()
ps = [mp.Process(target=run, args=(i + 1, q)) for i in range(W)]
t0 = time.time()
for p in ps: p.start()
res = [q.get() for _ in ps]
for p in ps: p.join()
el = time.time() - t0
lat = sorted(x for l, _ in res for x in l); errs = sum(e for _, e in res)
pc = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(f"gateway bench: {len(lat)} signed command-loop requests in {el:.1f} s over {W} keep-alive TLS connections")
print(f"  throughput: {len(lat)/el:.0f} req/s   errors (non-200): {errs}")
print(f"  latency ms: p50 {pc(.5):.2f}  p90 {pc(.9):.2f}  p99 {pc(.99):.2f}  max {lat[-1]*1000:.2f}")
PY
cpu1=$(awk '{print $14 + $15}' /proc/$GW_PID/stat)
tck=$(getconf CLK_TCK)
echo "  gateway CPU: $(( (cpu1 - cpu0) * 1000 / tck )) ms for the run; peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$GW_PID/status)"
# the device simulator (C, libcurl): enrollments and command round trips
if [ -x "$BIN/picomdm-devsim" ]; then
    cpu0=$(awk '{print $14 + $15}' /proc/$GW_PID/stat)
    "$BIN/picomdm-devsim" --url "$URL" --ca-bundle "$PKI/ca.pem" --ca-cert "$PKI/ca.pem" \
        --ca-key "$PKI/ca.key" --kind mix --devices "${DEVICES:-300}" --concurrency 16 --rounds 3 \
        --log-level warn 2>&1 | sed 's/^/  devsim: /'
    cpu1=$(awk '{print $14 + $15}' /proc/$GW_PID/stat)
    echo "  gateway CPU for the devsim run: $(( (cpu1 - cpu0) * 1000 / tck )) ms; peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$GW_PID/status)"
fi
