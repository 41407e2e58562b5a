#!/bin/bash
# push_client's every outcome rule again, with the opt-in own HTTP/2 client
# (picomdm-pusher --transport h2) instead of the default libcurl transport.
export PICOMDM_TRANSPORT=h2
exec bash "$(dirname "$0")/push_client.sh"
