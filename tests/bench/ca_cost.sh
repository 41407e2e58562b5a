#!/bin/bash
# ca_cost: what picomdm-ca's CPU per enrollment is made of, in process
# (build/rel/test/ca_cost with CA_COST=N; source ca/ca_cost_test.c): each step
# of a PKCSReq (this thread's CPU time, median over N requests, and OpenSSL
# allocations per step), the profile path, and single OpenSSL calls for
# reference (the private-key operations, one certificate decode). Two key
# sets: `picomdm up`'s (P-256 CA, RSA-2048 SCEP RA, P-256 profile signer)
# and an RSA-2048 CA that is its own RA. CA_COST_N sets N (default 300).
set -u
cd "$(dirname "$0")/../.." || exit 1
h=build/rel/test/ca_cost
[ -x "$h" ] || { echo "ca_cost bench: $h missing; run make tests first"; exit 1; }
echo "ca_cost: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
CA_COST=${CA_COST_N:-300} "$h"
