#!/bin/bash
# inventory_osversion — the device's OS version changes between two
# DeviceInformation answers (devsim --os-version, same identity): the event
# stream (`picomdm watch inventory.changed`) and the timeline carry an
# inventory.changed with OSVersion old -> new; the enrollment's OS follows
# (`picomdm devices --os`), and `picomdm device` shows the new value.
UP_NAME=inventory_osversion
source "$(dirname "$0")/up_lib.inc"
"$BIN/picomdm-devsim" --help 2>&1 | grep -q -- "--os-version" || { echo "skipped: picomdm-devsim has no --os-version"; exit 77; }
up_start
up_device osversion-test-device
DS+=(--seed 5)

OLD=17.5.1 NEW=18.0.1
timeout 30 "${DS[@]}" --os-version $OLD --rounds 1 >"$T/ds1.out" 2>&1 || { cat "$T/ds1.out"; fail "enrollment failed"; }
eid=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -1)
[ -n "$eid" ] || fail "no enrollment after devsim"
di() { "${P[@]}" enqueue DeviceInformation --set Queries=OSVersion,BuildVersion --to "$eid" --no-push >/dev/null || fail "enqueue DeviceInformation"; }
di
timeout 30 "${DS[@]}" --os-version $OLD --no-enroll --rounds 1 >"$T/ds2.out" 2>&1 || { cat "$T/ds2.out"; fail "first answer failed"; }
"${P[@]}" devices --os $OLD | grep -q "$eid" || fail "--os $OLD does not find the device after the first answer"
# watch the event stream during the update
"$BIN/picomdm" watch inventory.changed --count 1 >"$T/watch.out" 2>"$T/watch.err" &
W_PID=$!
BG_PIDS+=("$W_PID")
wait_for 20 grep -q "watching events" "$T/watch.err" || fail "picomdm watch did not start: $(cat "$T/watch.err")"
sleep 0.5 # the subscription travels to the broker (no event says when it is there)
di
timeout 30 "${DS[@]}" --os-version $NEW --no-enroll --rounds 1 >"$T/ds3.out" 2>&1 || { cat "$T/ds3.out"; fail "second answer failed"; }
wait_for 20 grep -q OSVersion "$T/watch.out" || { cat "$T/watch.out" "$T/watch.err"; fail "no inventory.changed on the event stream"; }
kill -TERM "$W_PID" 2>/dev/null; W_PID=
cat "$T/watch.out"
python3 - "$T/watch.out" $OLD $NEW <<'PY' || fail "the event does not carry OSVersion $OLD -> $NEW"
import json, sys
ev = json.loads(open(sys.argv[1]).readline())
d = ev.get("body", ev).get("data")
ch = [c for c in d["changes"] if c["key"] == "OSVersion"]
assert ch and ch[0]["old"] == sys.argv[2] and ch[0]["new"] == sys.argv[3], d
assert d["request_type"] == "DeviceInformation", d
PY
echo "ok  event stream: inventory.changed OSVersion $OLD -> $NEW"
"${P[@]}" timeline "$eid" >"$T/tl.txt" || fail "timeline failed"
grep "inventory.changed" "$T/tl.txt" | grep -q "\"key\":\"OSVersion\",\"old\":\"$OLD\",\"new\":\"$NEW\"" ||
    { grep inventory.changed "$T/tl.txt"; fail "timeline lacks OSVersion $OLD -> $NEW"; }
echo "ok  timeline"
"${P[@]}" devices --os $NEW | grep -q "$eid" || fail "--os $NEW does not find the device"
"${P[@]}" devices --os $OLD 2>/dev/null | grep -q "$eid" && fail "--os $OLD still finds the device"
"${P[@]}" devices --query OSVersion=$NEW | grep -q "$eid" || fail "--query OSVersion=$NEW does not find the device"
"${P[@]}" device "$eid" | grep -q "^OS *$NEW" || fail "picomdm device does not show OS $NEW"
echo "ok  devices --os / --query / device follow the update"
kill -TERM "$UP_PID"; wait "$UP_PID"; UP_PID=
echo "inventory_osversion: all checks passed"
