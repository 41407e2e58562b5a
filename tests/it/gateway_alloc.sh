#!/bin/bash
# gateway_alloc: the rel gateway links mimalloc (Makefile ALLOC_PROCS) and
# sets its decommit delay to 1 s at start (gateway/main.c with common/pm_alloc.c pm_alloc_decommit_delay:
# freed spans were given back to the OS 25 ms after use and faulted in
# again by the next requests when they come spread out; docs/gateway.md,
# "Session 9"). The value logged is read back from mimalloc.
. "$(dirname "$0")/common.inc" # need_mimalloc; the lib below may redefine the rest
source "$(dirname "$0")/e2e_lib.bash"
need_mimalloc "$BIN/picomdm-gateway"
gw_pki
PORT=$(free_port)
[ "$PORT" != 0 ] || fail "no free port"
out=$(timeout 20 "$BIN/picomdm-gateway" --check --listen "127.0.0.1:$PORT" --device-ca "$PKI/ca.pem" \
    --tls-cert "$PKI/tls.pem" --tls-key "$PKI/tls.key" --admin-listen off 2>&1)
grep -qx 'ok' <<<"$out" || fail "gateway --check did not say ok: $out"
grep -Eq 'allocator: mimalloc 2[0-9]{2}, freed memory returned to the OS after 1000 ms unused' <<<"$out" ||
    fail "the decommit delay was not set (expected 1000 ms read back from mimalloc): $(grep allocator <<<"$out")"
# the same with the daemon itself (not only --check), on the bus
gw_broker
gw_gateway --tls-cert "$PKI/tls.pem" --tls-key "$PKI/tls.key" --admin-listen off
wait_for 10 "the gateway's allocator line" log_has gateway.log 'allocator: mimalloc 2[0-9][0-9], freed memory returned to the OS after 1000 ms unused'
echo "ok: mimalloc linked, decommit delay 1000 ms"
