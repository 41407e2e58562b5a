#!/bin/bash
# e2e_status — every Status value through the real stack (broker, store,
# scheduler, TLS gateway; devices are the simulator or curl + openssl cms):
#   1. Acknowledged, Error (with ErrorChain) and CommandFormatError in one
#      session, in enqueue order, stored as results; Idle with nothing queued
#      gets an empty 200.
#   2. NotNow: stays queued, never re-offered in the same session, re-offered
#      in the next one, then acknowledged.
#   3. Two devices interleaved request by request on one command.
#   4. A macOS user channel and a User Enrollment device.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"
command -v openssl >/dev/null || skip "skipped: openssl CLI not installed"

e2e_up
U1=$(devsim_id 201)
U2=$(devsim_id 202)
for d in "dev1 201" "dev2 202"; do
    set -- $d
    devsim $1 $2 --rounds 0 >"$T/enroll.out" 2>&1 || { cat "$T/enroll.out"; fail "enroll $1"; }
done
# qstatus EID CU: the queue status of one command for one enrollment
qstatus() { cli queue "$1" --all | awk -v c="$2" '$1 == c { print $3 }'; }
# session: the devsim summary must show these answer counts
answers() { grep -q "Acknowledged $2, Error $3, CommandFormatError $4, NotNow $5 " "$1" ||
    fail "answers: expected Ack $2 Err $3 CFE $4 NotNow $5: $(grep answers "$1")"; }

# ---- 1. Acknowledged, Error, CommandFormatError in one session ----
A=$(cli enqueue DeviceInformation --to "$U1" --set Queries=LastCloudBackupDate,OSVersion) || fail enqueue
E=$(cli enqueue RemoveProfile --to "$U1" --set Identifier=com.example.not-installed) || fail enqueue
F=$(cli enqueue InstallProfile --raw --to "$U1") || fail "enqueue --raw" # no Payload
devsim dev1 201 --no-enroll --rounds 1 >"$T/s1.out" 2>&1 || { cat "$T/s1.out"; fail "session 1"; }
answers "$T/s1.out" 1 1 1 0
[ "$(qstatus "$U1" "$A")" = acknowledged ] || fail "DeviceInformation not acknowledged"
[ "$(qstatus "$U1" "$E")" = error ] || fail "RemoveProfile not error: $(cli queue "$U1" --all)"
[ "$(qstatus "$U1" "$F")" = format_error ] || fail "InstallProfile without Payload not format_error"
cli results "$E" >"$T/rE" || fail "results $E"
grep -q "^RemoveProfile $E  *Error" "$T/rE" && grep -q 'ErrorChain' "$T/rE" ||
    fail "Error result without ErrorChain: $(cat "$T/rE")"
cli results "$F" | grep -q "^InstallProfile $F  *CommandFormatError" || fail "CommandFormatError not stored"
cli results "$A" | grep -q 'OSVersion:' || fail "QueryResponses not stored"
# the order of delivery is the enqueue order
grep -F '"name":"command.delivered"' "$T/events.jsonl" | grep -o '"command_uuid":"[^"]*"' |
    cut -d'"' -f4 | tr '\n' ' ' >"$T/order"
[ "$(cat "$T/order")" = "$A $E $F " ] || fail "delivery order [$(cat "$T/order")], expected [$A $E $F]"
echo "ok  Acknowledged, Error (ErrorChain), CommandFormatError stored, delivered in order"

# Idle with nothing queued: an empty 200
plist Status Idle UDID "$U1" >"$T/idle1"
expect 200 "$(put /mdm/connect "$T/idle1" dev1)" "Idle, nothing queued"
[ ! -s "$T/resp" ] || fail "Idle with an empty queue got a body: $(cat "$T/resp")"

# ---- 2. NotNow: re-offered only in a later session ----
N=$(cli enqueue DeviceInformation --to "$U1" --set Queries=OSVersion) || fail enqueue
devsim dev1 201 --no-enroll --rounds 2 --notnow-rate 1 >"$T/nn.out" 2>&1 ||
    { cat "$T/nn.out"; fail "NotNow sessions (a same-session re-offer makes devsim exit 1)"; }
answers "$T/nn.out" 0 0 0 2
grep -q 're-offered in a later session 1, .*same-session violations 0' "$T/nn.out" ||
    fail "NotNow bookkeeping: $(grep answers "$T/nn.out")"
[ "$(qstatus "$U1" "$N")" = notnow ] || fail "NotNow command not kept queued as notnow"
cli queue "$U1" | awk -v c="$N" '$1 == c { exit !($(NF - 1) == 2) }' ||
    fail "NotNow tally is not 2: $(cli queue "$U1")"
devsim dev1 201 --no-enroll --rounds 1 >"$T/nn2.out" 2>&1 || { cat "$T/nn2.out"; fail "session after NotNow"; }
answers "$T/nn2.out" 1 0 0 0
[ "$(qstatus "$U1" "$N")" = acknowledged ] || fail "re-offered command not acknowledged"
echo "ok  NotNow kept, re-offered in the next session only, then acknowledged"

# ---- 3. two devices interleaved, request by request (curl, signed by each device) ----
C1=$(cli enqueue DeviceInformation --to "$U1" "$U2" --set Queries=OSVersion) || fail enqueue
C2=$(cli enqueue ProfileList --to "$U2") || fail enqueue
step() { # step IDENT FILE WANT-UUID|empty what
    expect 200 "$(put /mdm/connect "$2" "$1")" "$4"
    if [ "$3" = empty ]; then
        [ ! -s "$T/resp" ] || fail "$4: expected an empty body, got $(grep -o '[0-9a-f-]\{36\}' "$T/resp")"
    else
        grep -q "<string>$3</string>" "$T/resp" || fail "$4: expected command $3, got: $(head -c 400 "$T/resp")"
    fi
}
plist Status Idle UDID "$U2" >"$T/idle2"
plist Status Acknowledged CommandUUID "$C1" UDID "$U1" >"$T/ack1"
plist Status NotNow CommandUUID "$C1" UDID "$U2" >"$T/nn2"
plist Status Acknowledged CommandUUID "$C2" UDID "$U2" >"$T/ack2b"
plist Status Acknowledged CommandUUID "$C1" UDID "$U2" >"$T/ack2"
step dev1 "$T/idle1" "$C1" "U1 Idle -> C1"
step dev2 "$T/idle2" "$C1" "U2 Idle -> C1"
step dev2 "$T/nn2" "$C2" "U2 NotNow C1 -> C2, not C1"
step dev1 "$T/ack1" empty "U1 Ack C1 -> nothing"
step dev2 "$T/ack2b" empty "U2 Ack C2 -> nothing (C1 not in this session)"
step dev2 "$T/idle2" "$C1" "U2 new session -> C1 again"
step dev2 "$T/ack2" empty "U2 Ack C1 -> nothing"
cli results "$C1" >"$T/rC1" || fail "results $C1"
grep -q "Acknowledged  *on $U1 " "$T/rC1" && grep -q "Acknowledged  *on $U2 " "$T/rC1" ||
    fail "C1 results for both devices: $(cat "$T/rC1")"
[ "$(qstatus "$U2" "$C2")" = acknowledged ] || fail "C2 not acknowledged"

# ---- 4. macOS user channel, User Enrollment ----
M=$(devsim_id 203 --kind mac-user)
devsim dev3 203 --kind mac-user --rounds 0 >"$T/mac.out" 2>&1 || { cat "$T/mac.out"; fail "mac-user enroll"; }
MU=$(cli devices | awk -v m="$M:" 'index($1, m) == 1 && $2 == "user" { print $1 }')
[ -n "$MU" ] || fail "no user channel enrollment for $M: $(cli devices)"
UC=$(cli enqueue ProfileList --to "$MU") || fail "enqueue to the user channel"
DC=$(cli enqueue DeviceInformation --to "$M" --set Queries=OSVersion) || fail "enqueue to the Mac"
devsim dev3 203 --kind mac-user --no-enroll --rounds 1 >"$T/mac2.out" 2>&1 ||
    { cat "$T/mac2.out"; fail "mac-user session"; }
answers "$T/mac2.out" 2 0 0 0
cli results "$UC" | grep -q "^ProfileList $UC  *Acknowledged  *on $MU " || fail "user-channel result"
cli results "$DC" | grep -q "^DeviceInformation $DC  *Acknowledged  *on $M " || fail "Mac device result"
echo "ok  macOS user channel $MU"

UE=$(devsim_id 204 --kind ue)
devsim dev4 204 --kind ue --rounds 0 >"$T/ue.out" 2>&1 || { cat "$T/ue.out"; fail "UE enroll"; }
cli devices | grep -q "^$UE  *user-enrollment " || fail "no user-enrollment $UE: $(cli devices)"
UEC=$(cli enqueue DeviceInformation --to "$UE" --set Queries=OSVersion) || fail "enqueue UE"
devsim dev4 204 --kind ue --no-enroll --rounds 1 >"$T/ue2.out" 2>&1 || { cat "$T/ue2.out"; fail "UE session"; }
answers "$T/ue2.out" 1 0 0 0
cli results "$UEC" | grep -q "Acknowledged  *on $UE " || fail "User Enrollment result"
echo "ok  User Enrollment $UE"

[ "$(events)" = 0 ] || fail "unexpected security.rejected: $(grep rejected "$T/events.jsonl" | head -3)"
echo "e2e_status: all checks passed"
