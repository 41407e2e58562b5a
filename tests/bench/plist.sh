#!/bin/bash
# plist bridge speed: a 200-app InstalledApplicationList response (XML and
# binary) converted to msgpack, and msgpack back to XML, 2000 times each.
# Figures come from the pm_plist unit test in benchmark mode.
set -u
cd "$(dirname "$0")/../.."
t=build/rel/test/pm_plist
[ -x "$t" ] || { echo "build first: make"; exit 1; }
PM_PLIST_BENCH=${PM_PLIST_BENCH:-2000} "$t" 2>&1 | grep '^#' | sed 's/^# //'
