#!/bin/bash
# devsim_cms: the simulator's Mdm-Signature is what Apple devices send and
# what any server's OpenSSL accepts: `openssl cms -verify -binary -inform DER
# -content body -CAfile ca.pem` succeeds for EC and RSA keys, SHA-256 and SHA-1;
# and fails for a modified body or another CA.
source "$(dirname "$0")/devsim_lib.inc"
command -v openssl >/dev/null || skip "openssl command not installed"
"$DEVSIM" --make-ca "$W/ca" >/dev/null || fail "--make-ca"
"$DEVSIM" --make-ca "$W/other" >/dev/null || fail "--make-ca other"
n=0
for kt in ec rsa; do
    for dg in sha256 sha1; do
        for what in authenticate tokenupdate idle DeviceInformation; do
            "$DEVSIM" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" --key-type $kt --digest $dg \
                --kind mac-user --print $what --sig-out "$W/sig.b64" >"$W/body" || fail "print $what"
            base64 -d "$W/sig.b64" >"$W/sig.der" || fail "signature is not base64"
            openssl cms -verify -binary -inform DER -in "$W/sig.der" -content "$W/body" \
                -CAfile "$W/ca.pem" -out /dev/null 2>"$W/verify.err" ||
                { cat "$W/verify.err"; fail "openssl rejects $kt/$dg signature of $what"; }
            # the digest really is the one asked for
            openssl cms -cmsout -print -inform DER -in "$W/sig.der" | grep -qi "algorithm: $dg" ||
                fail "$kt/$dg: digest algorithm $dg not in the SignerInfo"
            n=$((n + 1))
        done
    done
done
# negative: tampered body, other CA
"$DEVSIM" --ca-cert "$W/ca.pem" --ca-key "$W/ca.key" --print authenticate --sig-out "$W/sig.b64" >"$W/body"
base64 -d "$W/sig.b64" >"$W/sig.der"
sed 's/Authenticate/Authenticatf/' "$W/body" >"$W/body2"
cmp -s "$W/body" "$W/body2" && fail "tampering did not change the body"
openssl cms -verify -binary -inform DER -in "$W/sig.der" -content "$W/body2" -CAfile "$W/ca.pem" \
    -out /dev/null 2>/dev/null && fail "a tampered body verified"
openssl cms -verify -binary -inform DER -in "$W/sig.der" -content "$W/body" -CAfile "$W/other.pem" \
    -out /dev/null 2>/dev/null && fail "verified against the wrong CA"
echo "devsim_cms: $n signatures verified by openssl cms, 2 bad ones refused"
