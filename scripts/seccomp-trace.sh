#!/bin/sh
# Regenerates the observed syscall set of a serving lgnet under load (strace -f), per thread role, and
# checks it against sandbox/seccomp-policy.ts. See scripts/seccomp-trace.ts for the options.
#   sudo scripts/seccomp-trace.sh --seconds 10            # jail off: what Node/V8/libuv/lgnet do
#   sudo scripts/seccomp-trace.sh --seconds 10 --jail     # jail on: and nothing of it is refused
# A plain summary with strace's own counter, for comparison:
#   sudo strace -f -c -o /tmp/c.txt node --import tsx test/sandbox/fixtures/jailed-device.ts \
#     --netns /run/netns/NS --nsname NS --load-seconds 10
set -eu
cd "$(dirname "$0")/.."
exec npx tsx scripts/seccomp-trace.ts "$@"
