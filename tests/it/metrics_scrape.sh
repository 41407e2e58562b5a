#!/bin/bash
# metrics_scrape — issue #7: every process publishes stats.<process> snapshots
# on the bus, the gateway serves them all on its admin listener in the
# Prometheus text format. Real broker, store, scheduler and TLS gateway with
# stats-interval-s 1; two simulated devices and one unsigned request; then
# `curl /metrics` and check: the exposition format line by line, the gateway's
# request counters equal the requests made, the scheduler/store/broker series
# with their process label (and the store applied the same device requests),
# cumulative histograms whose _count equals the +Inf bucket, the
# staleness gauge, and the admin port bound to 127.0.0.1 only.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
command -v python3 >/dev/null || skip "skipped: python3 not installed"

export PICOMDM_STATS_INTERVAL_S=1 # every process, through the environment (pm_cfg)
gw_pki
gw_broker
gw_backend --publish-endpoint "ipc://$T/pub"
# the pusher (no push certificate: it serves and reports every wake failed) and the ca
"$BIN/picomdm-pusher" --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" >>"$T/pusher.log" 2>&1 &
PIDS+=($!)
"$BIN/picomdm-ca" --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" --data-dir "$T/ca" \
    --server-url https://127.0.0.1:8443/mdm/server --scep-url https://127.0.0.1:8443/scep \
    --topic com.apple.mgmt.External.it >>"$T/ca.log" 2>&1 &
PIDS+=($!)
wait_for 30 "the ca to register" log_has broker.log "registered for 'ca'"
wait_for 10 "the pusher to register" log_has broker.log "registered for 'push'"
APORT=$(free_port)
[ "$APORT" != 0 ] || fail "no free port for the admin listener"
gw_tls --subscribe-endpoint "ipc://$T/sub" --admin-listen "127.0.0.1:$APORT"
[ "$APORT" != "$PORT" ] || skip "skipped: the admin and device ports came out equal (rerun)"
wait_for 10 "the admin listener" log_has gateway.log "admin listener on 127.0.0.1:$APORT"

scrape() { curl -sS -m 5 -o "$T/metrics.txt" -w '%{http_code}' "http://127.0.0.1:$APORT/metrics" 2>>"$T/curl.out"; }
# metric LINE-PREFIX: the value of the first sample line starting with it (0 if none)
metric() { awk -v p="$1" 'index($0, p) == 1 { print $NF; found = 1; exit } END { if (!found) print 0 }' "$T/metrics.txt"; }

# the admin port: loopback only
ss -ltn | awk '{print $4}' | grep -q "^127.0.0.1:$APORT\$" || fail "admin port $APORT not bound on 127.0.0.1"
ss -ltn | awk '{print $4}' | grep -v "^127.0.0.1:" | grep -q ":$APORT\$" && fail "admin port $APORT bound beyond loopback"
echo "ok  admin listener bound to 127.0.0.1:$APORT only"

# device traffic: 2 devices x (Authenticate, TokenUpdate, one Idle session) + 1 unsigned check-in
devsim dev1 301 --rounds 1 >"$T/dev1.out" 2>&1 || { cat "$T/dev1.out"; fail "devsim dev1 failed"; }
devsim dev2 302 --rounds 1 >"$T/dev2.out" 2>&1 || { cat "$T/dev2.out"; fail "devsim dev2 failed"; }
plist MessageType Authenticate UDID metrics-unsigned Topic com.apple.mgmt.x >"$T/unsigned.plist"
expect 400 "$(put /mdm/checkin "$T/unsigned.plist" -)" "unsigned check-in"
code=$(curl -sS -m 10 --cacert "$PKI/ca.pem" -o "$T/caps" -w '%{http_code}' "$URL/scep?operation=GetCACaps")
[ "$code" = 200 ] || fail "SCEP GetCACaps through the gateway: HTTP $code"
NCHECKIN=5 NCONNECT=2 NDEVICE=7 # 4 accepted check-ins + 1 rejected; 2 Idle
echo "requests made: $NCHECKIN check-in, $NCONNECT command loop"

# wait for a snapshot of every back-end process taken after that traffic
ok=0
for i in $(seq 1 120); do
    [ "$(scrape)" = 200 ] || fail "GET /metrics: HTTP $(cat "$T/metrics.txt" | head -c 200)"
    s=$(metric 'picomdm_scheduler_requests_total{process="scheduler",')
    b=$(metric 'picomdm_broker_workers{process="broker",')
    o=$(metric 'picomdm_store_ops_total{process="store",')
    # device requests reach the store on either device path (docs/queue.md)
    sc=$(grep '^picomdm_store_ops_total{' "$T/metrics.txt" | grep -E 'type="store\.(checkin|connect)"' |
        awk '{ s += $NF } END { print s + 0 }')
    ca=$(metric 'picomdm_ca_scep_requests_total{process="ca",')
    pu=$(grep -c '^picomdm_stats_age_seconds{process="pusher",' "$T/metrics.txt")
    if [ "$sc" -ge $((NDEVICE - 1)) ] && [ "$b" != 0 ] && [ "$o" != 0 ] && [ "$ca" != 0 ] && [ "$pu" = 1 ]; then
        ok=1
        break
    fi
    sleep 0.25
done
[ $ok = 1 ] || { cat "$T/metrics.txt" | head -80; fail "no scheduler/store/broker/ca/pusher series with the traffic after 120 scrapes (30 s and more)"; }
echo "ok  scrape has scheduler, store, broker, ca and pusher series"

python3 - "$T/metrics.txt" $NCHECKIN $NCONNECT <<'PY' || { head -60 "$T/metrics.txt"; fail "exposition checks failed"; }
import re, sys
path, ncheckin, nconnect = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = open(path).read()
assert text.endswith("\n"), "exposition does not end with a newline"
sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
types, samples, seen_type = {}, [], set()
for n, line in enumerate(text.splitlines(), 1):
    if line.startswith("# HELP ") or line.startswith("# TYPE "):
        parts = line.split(" ", 3)
        if parts[1] == "TYPE":
            assert parts[2] not in seen_type, f"line {n}: second TYPE for {parts[2]}"
            assert parts[3] in ("counter", "gauge", "histogram"), f"line {n}: bad type"
            seen_type.add(parts[2]); types[parts[2]] = parts[3]
        continue
    m = sample.match(line)
    assert m, f"line {n} is not `name{{labels}} number`: {line!r}"
    labels = dict(label.findall(m.group(3) or ""))
    assert "process" in labels and "instance" in labels, f"line {n}: no process/instance label"
    samples.append((m.group(1), labels, float(m.group(4))))
print(f"ok  {len(samples)} samples, {len(types)} metric families, every line well-formed")

def get(name, **want):
    return [v for (nm, l, v) in samples if nm == name and all(l.get(k) == w for k, w in want.items())]

# gateway: requests by route equal the requests made
gw = dict(process="gateway")
ci = sum(get("picomdm_gateway_responses_total", route="checkin", **gw))
co = sum(get("picomdm_gateway_responses_total", route="connect", **gw))
assert ci == ncheckin, f"gateway counted {ci} check-in answers, {ncheckin} were made"
assert co == nconnect, f"gateway counted {co} command-loop answers, {nconnect} were made"
assert get("picomdm_gateway_responses_total", route="checkin", code="400", **gw) == [1.0], "the 400 is not counted"
dev = get("picomdm_gateway_device_requests_total", **gw)
assert dev == [ncheckin + nconnect], f"device requests {dev}, expected {ncheckin + nconnect}"
hc = get("picomdm_gateway_request_duration_seconds_count", **gw)
assert hc == [ncheckin + nconnect - 1], f"latency count {hc}: every request that reached the back end"
assert get("picomdm_gateway_tls_handshakes_total", **gw)[0] >= 1, "no TLS handshake counted"
print(f"ok  gateway: {ci:.0f} check-in + {co:.0f} command-loop answers, {dev[0]:.0f} device requests")

# the other processes, with their process label
for p, name in (("scheduler", "picomdm_scheduler_requests_total"), ("store", "picomdm_store_ops_total"),
                ("broker", "picomdm_broker_requests_total"), ("store", "picomdm_store_commit_duration_seconds_count")):
    assert get(name, process=p), f"no {name} for process {p}"
# the store applied every device request the gateway passed on (straight, on the
# direct device path, or through the scheduler: docs/queue.md)
sched = sum(get("picomdm_store_ops_total", process="store", type="store.checkin")) + \
        sum(get("picomdm_store_ops_total", process="store", type="store.connect"))
assert sched == ncheckin + nconnect - 1, f"store applied {sched} device requests, the gateway passed {ncheckin + nconnect - 1}"
assert get("picomdm_broker_workers", process="broker", service="scheduler") == [1.0], "broker: scheduler workers"
assert get("picomdm_broker_workers", process="broker", service="store") == [1.0], "broker: store workers"
assert get("picomdm_ca_scep_requests_total", process="ca", operation="GetCACaps") == [1.0], "ca: GetCACaps not counted once"
assert get("picomdm_gateway_responses_total", route="scep", code="200", **gw) == [1.0], "gateway: the SCEP answer not counted"
assert get("picomdm_broker_workers", process="broker", service="push") == [1.0], "broker: push workers"
for p in ("gateway", "broker", "store", "scheduler", "pusher", "ca"):
    age = get("picomdm_stats_age_seconds", process=p)
    assert len(age) == 1 and 0 <= age[0] < 5, f"stats age of {p}: {age}"
print(f"ok  store applied {sched:.0f} device requests; scheduler, broker series present; ages fresh")

# histograms: cumulative buckets, +Inf == _count
nh = 0
for fam, t in types.items():
    if t != "histogram":
        continue
    series = {}
    for (nm, l, v) in samples:
        if nm == fam + "_bucket":
            key = tuple(sorted((k, x) for k, x in l.items() if k != "le"))
            series.setdefault(key, []).append((l["le"], v))
    for key, bs in series.items():
        les = [float("inf") if le == "+Inf" else float(le) for le, _ in bs]
        assert les == sorted(les) and les[-1] == float("inf"), f"{fam}{key}: le not ascending to +Inf"
        vals = [v for _, v in bs]
        assert all(a <= b for a, b in zip(vals, vals[1:])), f"{fam}{key}: buckets not cumulative {vals}"
        cnt = [v for (nm, l, v) in samples if nm == fam + "_count" and tuple(sorted(l.items())) == key]
        assert cnt == [vals[-1]], f"{fam}{key}: _count {cnt} != +Inf bucket {vals[-1]}"
        nh += 1
assert nh >= 3, f"only {nh} histogram series"
print(f"ok  {nh} histogram series cumulative, _count == +Inf bucket")
PY

# nothing device-secret: no UDID, token or PushMagic from the devices in the text
U1=$(devsim_id 301)
[ -n "$U1" ] || fail "cannot compute dev1's UDID"
grep -qF "$U1" "$T/metrics.txt" && fail "a device UDID appears in /metrics"
grep -qiE 'pushmagic|token=' "$T/metrics.txt" && fail "push data appears in /metrics"
echo "ok  no device identifiers in the exposition"

# other paths and methods on the admin listener
code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/nope")
[ "$code" = 404 ] || fail "GET /nope on the admin listener: $code, expected 404"
code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$APORT/metrics")
[ "$code" = 405 ] || [ "$code" = 501 ] || fail "POST /metrics: $code, expected 405/501"
echo "ok  admin listener: 404 elsewhere, GET only"

# the same snapshots from the CLI, without the gateway
cli stats store --seconds 3 >"$T/cli_stats.txt" 2>"$T/cli_stats.log" || fail "picomdm stats store: $(cat "$T/cli_stats.log")"
grep -q '^picomdm_store_ops_total{process="store",instance="[^"]*",type="store.checkin"} [1-9]' "$T/cli_stats.txt" ||
    fail "picomdm stats store printed: $(head -c 400 "$T/cli_stats.txt")"
grep -q 'process="scheduler"' "$T/cli_stats.txt" && fail "picomdm stats store printed another process"
echo "ok  picomdm stats store"

# queue depths: one command queued for both devices, not fetched yet
U1=$(devsim_id 301) U2=$(devsim_id 302)
cli enqueue ProfileList --to "$U1,$U2" --no-push >/dev/null 2>"$T/enq.err" || fail "enqueue: $(cat "$T/enq.err")"
ok=0
for i in $(seq 1 20); do
    cli stats store --seconds 2 >"$T/cli_stats2.txt" 2>/dev/null
    grep -q '^picomdm_store_queue_active{process="store",instance="[^"]*"} 2$' "$T/cli_stats2.txt" && { ok=1; break; }
done
[ $ok = 1 ] || fail "store_queue_active is not 2 after queueing one command for 2 devices: $(grep queue "$T/cli_stats2.txt")"
grep -q '^picomdm_store_queue_delivered_unanswered{process="store",instance="[^"]*"} 0$' "$T/cli_stats2.txt" ||
    fail "store_queue_delivered_unanswered: $(grep delivered "$T/cli_stats2.txt")"
echo "ok  queue depths: store_queue_active 2, delivered_unanswered 0"

# a second gateway on the same admin port keeps serving devices (metrics are not worth an outage)
P2=$(free_port)
"$BIN/picomdm-gateway" --listen "127.0.0.1:$P2" --request-endpoint "ipc://$T/req" --publish-endpoint "ipc://$T/pub" \
    --device-ca "$PKI/ca.pem" --tls-cert "$PKI/tls.pem" --tls-key "$PKI/tls.key" --admin-listen "127.0.0.1:$APORT" \
    >>"$T/gateway2.log" 2>&1 &
PIDS+=($!)
wait_for 10 "the second gateway to listen" log_has gateway2.log "listening on 127.0.0.1:$P2"
log_has gateway2.log "cannot listen on admin-listen" || fail "the second gateway did not report the busy admin port"
kill -0 "${PIDS[-1]}" || fail "the second gateway exited because of the busy admin port"
echo "metrics_scrape: all checks passed"
