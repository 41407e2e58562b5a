#!/bin/bash
# e2e_seed — the seed's flow, literally, with real processes only (broker,
# store, scheduler, TLS gateway on 127.0.0.1, the device simulator, the
# picomdm CLI):
#   picomdm watch (started first)
#   device: Authenticate -> TokenUpdate (Token as <data>, PushMagic, Topic)
#   operator: picomdm enqueue DeviceInformation --to <UDID> --set Queries=LastCloudBackupDate
#   device: Idle -> gets the command -> Acknowledged with QueryResponses
#   operator: picomdm results shows LastCloudBackupDate
#   watch saw checkin.Authenticate, checkin.TokenUpdate, command.queued,
#   command.delivered, command.result, in that order.
source "$(dirname "$0")/e2e_lib.bash"
[ -x "$BIN/picomdm-devsim" ] || skip "skipped: $BIN/picomdm-devsim is not built"

e2e_up
U=$(devsim_id 101)
[ -n "$U" ] || fail "could not learn the simulator's UDID"

# the device enrolls (no command loop yet)
devsim dev1 101 --rounds 0 >"$T/enroll.out" 2>&1 || { cat "$T/enroll.out"; fail "enrollment failed"; }
grep -q '1 enrollments' "$T/enroll.out" || fail "devsim did not enroll: $(cat "$T/enroll.out")"
cli devices >"$T/devices" || fail "picomdm devices failed"
grep -q "^$U .*true *true" "$T/devices" || fail "$U is not enrolled and pushable: $(cat "$T/devices")"
echo "ok  enrolled $U"

# the operator queues the command
CU=$(cli enqueue DeviceInformation --to "$U" --set Queries=LastCloudBackupDate) ||
    fail "picomdm enqueue failed"
[[ "$CU" =~ ^[0-9a-fA-F-]{36}$ ]] || fail "enqueue printed '$CU', not a CommandUUID"
cli queue "$U" >"$T/queue" || fail "picomdm queue failed"
grep -q "^$CU  *DeviceInformation  *pending" "$T/queue" || fail "not pending: $(cat "$T/queue")"
cli results "$CU" >"$T/res0" 2>&1
grep -q LastCloudBackupDate "$T/res0" && fail "a result exists before the device answered"
echo "ok  queued $CU"

# the device connects once: Idle -> DeviceInformation -> Acknowledged
devsim dev1 101 --no-enroll --rounds 1 >"$T/session.out" 2>&1 ||
    { cat "$T/session.out"; fail "the session failed"; }
grep -q 'Acknowledged 1,' "$T/session.out" || fail "device did not acknowledge: $(cat "$T/session.out")"

# the operator reads the answer
cli results "$CU" >"$T/res" || fail "picomdm results failed"
cat "$T/res"
grep -q "^DeviceInformation $CU  *Acknowledged  *on $U" "$T/res" || fail "result header wrong"
grep -q '^ *LastCloudBackupDate: [0-9]\{4\}-[0-9][0-9]-[0-9][0-9]T' "$T/res" ||
    fail "LastCloudBackupDate missing from the result"
cli queue "$U" --all >"$T/queue2" || fail "picomdm queue --all failed"
grep -q "^$CU  *DeviceInformation  *acknowledged" "$T/queue2" || fail "queue entry not acknowledged: $(cat "$T/queue2")"
echo "ok  results show LastCloudBackupDate"

# watch saw every step, in order, for this device
# (the answer's LastCloudBackupDate is new inventory: inventory.changed is logged with the result)
want=(checkin.Authenticate checkin.TokenUpdate command.queued command.delivered inventory.changed
      command.result)
wait_event 1 command.result "$CU"
grep -F "\"eid\":\"$U\"" "$T/events.jsonl" | grep -o '"name":"[^"]*"' | cut -d'"' -f4 >"$T/seen"
got=$(tr '\n' ' ' <"$T/seen")
[ "$got" = "${want[*]} " ] || fail "watch saw [$got], expected [${want[*]}]"
grep -F '"name":"command.result"' "$T/events.jsonl" | grep -q '"status":"Acknowledged"' ||
    fail "command.result is not Acknowledged"
# the secrets never reach the event stream
grep -qi 'pushmagic\|"token"' "$T/events.jsonl" && fail "a push secret is in the event stream"
[ "$(events)" = 0 ] || fail "unexpected security.rejected events"
echo "ok  watch saw: $got"
echo "e2e_seed: all checks passed"
