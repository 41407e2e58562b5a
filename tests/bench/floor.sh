#!/bin/bash
# floor bench (figures, not pass/fail): what the work that every device
# request and every enrollment cannot avoid costs on THIS machine, measured,
# next to issue #4's and #6's targets. The other benches say what PicoMDM
# costs; this one says how much of it any implementation of the same
# protocol and architecture pays, so that figures from different machines
# can be compared and a target can be checked against the hardware.
#
# Measured here:
#   - the public-key operations, with `openssl speed` (the library the
#     processes link; one core, no process or protocol around them):
#     ECDSA P-256 sign/verify, RSA-2048 private/public, X25519 derive;
#   - one request round trip through picomdm-broker at its cheapest
#     (tests/bench/bus.sh: an echo worker, ipc://, 64-byte requests, 256 in
#     flight, so that libzmq batches the most): CPU of broker + worker + client;
#   - decoding a certificate never seen before with d2i_X509 (build/rel/tt/x509_cost;
#     OpenSSL 3.0 decodes the public key through every provider decoder that
#     might apply), RSA-2048 and EC P-256, certificates made here: for scale;
#   - the store's work per device request in process (build/rel/test/store_prof:
#     decode, SQL, commit with synchronous=NORMAL, i.e. without the fsync the
#     service does, encode; no bus). This one is PicoMDM's own code, not a floor:
#     it is printed for scale.
# Then, from those figures only, the floor of
#   - a device request (e2e.sh's: EC P-256 device keys): one Mdm-Signature
#     verification + one bus round trip (gateway -> broker -> store and back);
#   - the same with RSA-2048 device keys (what SCEP-enrolled devices hold), and
#     what signing them costs the simulator that must run on the same cores;
#   - an enrollment from zero (enroll_e2e.sh's, `picomdm up`'s keys: P-256 CA,
#     profile signer and TLS key, RSA-2048 SCEP RA, RSA-2048 device key): the
#     RA's decryption of the PKCSReq and its CertRep signature (SCEP clients
#     encrypt to, and verify, an RSA RA), the CSR's and the PKCSReq's signature
#     checks, the certificate's and the profile's signatures, three full TLS
#     handshakes (each one X25519 derivation and one ECDSA signature; key
#     generation, HKDF and transcript hashes left out), the new certificate's
#     chain (one ECDSA verification), two signed check-ins, five bus round
#     trips. Decoding the device's new key (once by the ca, from the CSR, and
#     once by the gateway, from the certificate of the first check-in) is
#     printed beside it, not added: x509_cost measures d2i_X509, and the ca
#     and the gateway decode through library contexts narrowed to RSA and EC
#     keys, which take about a fifth of d2i_X509's instructions
#     (docs/gateway.md "Session 11 (cacpu)").
# Each floor counts only those operations: no TLS record, HTTP, plist,
# other ASN.1 decoding, SQLite or kernel socket work, so the real cost
# is always above it.
#   tests/bench/floor.sh        (SPEED_S=2: seconds per openssl speed test)
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${BIN:-$PWD/bin}
TT=${TT:-$PWD/build/rel/tt}
PROF=${STORE_PROF_BIN:-$PWD/build/rel/test/store_prof}
S=${SPEED_S:-2}
command -v openssl >/dev/null || { echo "floor: openssl(1) not found (make deps installs it)"; exit 1; }

# openssl speed -mr: "+F4:i:256:sign/s:verify/s" (ECDSA), "+F2:i:2048:private/s:public/s"
# (RSA), "+F5:i:253:op/s:s/op" (ECDH/X25519)
speed() { openssl speed -mr -seconds "$S" "$@" 2>/dev/null | grep '^+F'; }
us() { awk -v r="$1" 'BEGIN { if (r > 0) printf "%.1f", 1e6 / r; else print "?" }'; }
ec=$(speed ecdsap256 | awk -F: '$1 == "+F4" { print $4, $5 }')
rsa=$(speed rsa2048 | awk -F: '$1 == "+F2" { print $4, $5 }')
x=$(speed ecdhx25519 | awk -F: '$1 == "+F5" { print $4 }')
[ -n "$ec" ] && [ -n "$rsa" ] && [ -n "$x" ] || { echo "floor: openssl speed printed nothing usable (openssl $(openssl version))"; exit 1; }
ecs=$(us "${ec% *}") ecv=$(us "${ec#* }") rsas=$(us "${rsa% *}") rsav=$(us "${rsa#* }") xd=$(us "$x")

bus=$(INFLIGHT=256 TRANSPORTS=ipc EVENTS=0 bash tests/bench/bus.sh 2>&1 |
    awk '/per round trip:|^ +worker cpu|^ +client cpu/ { for (i = 1; i < NF; i++) if ($i == "cpu") { s += $(i + 1); p = p sprintf("%s%s %s", p == "" ? "" : " + ", $(i - 1) == "trip:" ? "broker" : $(i - 1), $(i + 1)) } }
         END { if (s > 0) printf "%.1f µs (%s)", s, p }')
[ -n "$bus" ] || { echo "floor: tests/bench/bus.sh printed no round trip (build first: make)"; exit 1; }
busrt=${bus%% *}

dec="not measured ($TT/x509_cost not built)" decr=0
if [ -x "$TT/x509_cost" ]; then
    K=$(mktemp -d /tmp/pm-floor.XXXXXX)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$K/r.key" -out "$K/r.pem" -subj /CN=floor -days 1 2>/dev/null
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$K/e.key" -out "$K/e.pem" -subj /CN=floor -days 1 2>/dev/null
    decr=$("$TT/x509_cost" "$K/r.pem" 1000 | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "µs") print $i }')
    dece=$("$TT/x509_cost" "$K/e.pem" 1000 | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "µs") print $i }')
    rm -rf "$K"
    if [ -n "$decr" ] && [ -n "$dece" ]; then dec="RSA-2048 $decr µs, EC P-256 $dece µs"; else dec="x509_cost failed" decr=0; fi
fi

store="not measured ($PROF not built)"
if [ -x "$PROF" ]; then
    store=$(STORE_PROF=1 "$PROF" 2>&1 | awk '/^round 2 .*store.connect (Idle|Acknowledged):/ {
            for (i = 1; i < NF; i++) { if ($i == "user") u = $(i + 1); if ($i == "sys") s = $(i + 1) }
            k = $0 ~ /Idle:/ ? "Idle" : "Acknowledged"; printf "%s%s %.0f µs", n++ ? ", " : "", k, u + s }
            END { if (n) print "" }')
    [ -n "$store" ] || store="store_prof printed no figures"
fi

echo "floor: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(openssl version | cut -d' ' -f1-2); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  openssl speed (one core): ECDSA P-256 sign $ecs µs, verify $ecv µs; RSA-2048 private $rsas µs, public $rsav µs; X25519 derive $xd µs"
echo "  one bus round trip at its cheapest (bus.sh: ipc, 256 in flight): $bus of CPU"
echo "  decoding a certificate not seen before (x509_cost, d2i_X509): $dec"
echo "  store in process (store_prof, no fsync, no bus; PicoMDM's own work, not a floor): store.connect $store"
awk -v dec="$decr" -v ecs="$ecs" -v ecv="$ecv" -v rsas="$rsas" -v rsav="$rsav" -v xd="$xd" -v bus="$busrt" 'BEGIN {
    dev = ecv + bus
    printf "  device request, EC P-256 device keys (e2e.sh): signature %.1f + bus %.1f = %.1f µs before TLS, HTTP, plist and the store; issue #4: <= 150 µs (%s)\n",
        ecv, bus, dev, (dev >= 150) ? "the floor alone is over it" : sprintf("%.1f µs left for everything else", 150 - dev)
    rdev = rsav + bus; cores = 3000 * rsas / 1e6
    printf "  device request, RSA-2048 device keys: signature %.1f + bus %.1f = %.1f µs; but the simulator signs each request (%.0f µs): 3,000 requests/s need %.1f cores for that alone (%s)\n",
        rsav, bus, rdev, rsas, cores, (cores >= 2) ? "more than this machine has" : "of this machine"
    hs = xd + ecs
    enr = 2 * rsas + 2 * rsav + 2 * ecs + 3 * hs + ecv + 2 * rsav + 5 * bus
    printf "  enrollment from zero: RA decrypt + CertRep signature 2 x %.0f, CSR + PKCSReq signatures 2 x %.1f, certificate + profile signatures 2 x %.1f, 3 TLS handshakes x %.1f, new chain %.1f, 2 check-ins x %.1f, 5 bus round trips x %.1f = %.0f µs; issue #6: <= 3,000 µs (%s)\n",
        rsas, rsav, ecs, hs, ecv, rsav, bus, enr,
        (enr >= 3000) ? "the floor alone is over it" : sprintf("%.0f µs left for six HTTP requests and their TLS records, the CMS and certificate parsing, the synced commits", 3000 - enr)
    if (dec > 0)
        printf "  not in the floor: decoding the new key in the two processes that see it (ca: the CSR; gateway: the certificate of its first check-in), %.1f µs each with d2i_X509, about a fifth of that with the decoder contexts narrowed to RSA and EC keys that the ca and the gateway use\n", dec
}'
