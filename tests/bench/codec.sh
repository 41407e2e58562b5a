#!/bin/bash
# Codec benchmark: encode + decode of a small bus message (echo with a 16-byte
# payload), single thread, release build. Prints ns/op and ops/s.
set -u
cd "$(dirname "$0")/../.."
t=build/rel/test/pm_msg
[ -x "$t" ] || { echo "codec bench: $t missing; run make first"; exit 1; }
PM_MSG_BENCH=${CODEC_BENCH_ITERS:-1000000} "$t"
