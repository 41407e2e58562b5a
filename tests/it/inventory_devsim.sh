#!/bin/bash
# inventory_devsim — the device simulator answers DeviceInformation,
# SecurityInfo, ProfileList, InstalledApplicationList and CertificateList
# through the real gateway, scheduler and store (`picomdm up`); afterwards the
# inventory holds what the simulator reported, the timeline shows the events
# in order, and `picomdm devices --query` finds the device in the store.
UP_NAME=inventory_devsim
source "$(dirname "$0")/up_lib.inc"
up_start
up_device inventory-test-device
DS+=(--seed 7 --apps 37)

# the device stays in its command loop (rounds) while we queue; first enroll it
timeout 30 "${DS[@]}" --rounds 1 >"$T/ds1.out" 2>&1 || { cat "$T/ds1.out"; fail "enrollment failed"; }
eid=$("${P[@]}" devices --json | sed -n 's/.*"eid":"\([^"]*\)".*/\1/p' | head -1)
[ -n "$eid" ] || fail "no enrollment after devsim"
for rt in SecurityInfo ProfileList InstalledApplicationList CertificateList; do
    "${P[@]}" enqueue $rt --to "$eid" --no-push >/dev/null || fail "enqueue $rt"
done
"${P[@]}" enqueue DeviceInformation --set Queries=OSVersion,Model,ProductName,SerialNumber --to "$eid" --no-push >/dev/null ||
    fail "enqueue DeviceInformation"
timeout 30 "${DS[@]}" --no-enroll --rounds 1 >"$T/ds2.out" 2>&1 || { cat "$T/ds2.out"; fail "command round failed"; }
"${P[@]}" device "$eid" --json >"$T/dev.json" || fail "picomdm device failed"
"${P[@]}" device "$eid" >"$T/dev.txt" || fail "picomdm device (text) failed"
cat "$T/dev.txt" | head -30
# what the simulator says it reports
"$BIN/picomdm-devsim" --seed 7 --print DeviceInformation >"$T/di.plist" 2>/dev/null || true
os=$(python3 -c "
import json,sys; d=json.load(open('$T/dev.json')); inv=d['inventory']
assert 'OSVersion' in inv and 'Model' in inv, inv.keys()
apps=inv['InstalledApplicationList']; assert len(apps)==37, len(apps)
assert any(k.startswith('SecurityInfo.') for k in inv), 'no SecurityInfo'
assert 'ProfileList' in inv and 'CertificateList' in inv
print(inv['OSVersion'])") || fail "inventory does not hold what the simulator reported"
echo "ok  inventory: OSVersion $os, 37 apps, SecurityInfo, ProfileList, CertificateList"
"${P[@]}" timeline "$eid" >"$T/tl.txt" || fail "timeline failed"
grep -q "checkin.Authenticate" "$T/tl.txt" && grep -q "inventory.changed" "$T/tl.txt" || { cat "$T/tl.txt"; fail "timeline lacks events"; }
a=$(grep -n checkin.Authenticate "$T/tl.txt" | head -1 | cut -d: -f1); b=$(grep -n inventory.changed "$T/tl.txt" | head -1 | cut -d: -f1)
[ "$a" -lt "$b" ] || fail "timeline out of order"
echo "ok  timeline ($(wc -l <"$T/tl.txt") events)"
"${P[@]}" devices --query "OSVersion=$os" | grep -q "$eid" || fail "--query OSVersion=$os does not find the device"
"${P[@]}" devices --query "OSVersion=0.0.0" 2>/dev/null | grep -q "$eid" && fail "--query matched a wrong value"
"${P[@]}" devices --os "$os" | grep -q "$eid" || fail "--os $os does not find the device"
"${P[@]}" devices --silent-for 1d 2>/dev/null | grep -q "$eid" && fail "--silent-for 1d matched a device seen now"
echo "ok  devices filters"
kill -TERM "$UP_PID"; wait "$UP_PID"; UP_PID=
echo "inventory_devsim: all checks passed"
