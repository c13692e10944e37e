#!/bin/bash
# Host side: boot the project's kernel (kernel-patch/vm-run.sh) and, in it, systemd as PID 1 of a
# container (boot.sh), which runs guest.sh: make install, systemctl start/reload/watchdog, security.
#
# Usage: tests/vm/systemd/run.sh [OUT]     (default OUT: a new /tmp/mglrud-systemd.XXXXXX)
# Exit status: the number of failed checks (0 = all passed); 125 if the guest never reported.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
OUT=${1:-$(mktemp -d /tmp/mglrud-systemd.XXXXXX)}
mkdir -p "$OUT/sd"
rm -f "$OUT/sd/rc" "$OUT/sd/guest.log"
"$REPO/kernel-patch/vm-run.sh" --out "$OUT" --timeout 1800 --exec "bash tests/vm/systemd/boot.sh $OUT/sd $REPO"
vm_rc=$?
echo "---- guest.log"
cat "$OUT/sd/guest.log" 2>/dev/null || echo "(none)"
if [ ! -f "$OUT/sd/rc" ]; then
    echo "---- systemd.log (last 60 lines)"
    tail -60 "$OUT/sd/systemd.log" 2>/dev/null
    echo "run.sh: the test unit never reported (vm-run.sh exit $vm_rc); results in $OUT" >&2
    exit 125
fi
rc=$(cat "$OUT/sd/rc")
echo "run.sh: $rc failed check(s); exposure $(cat "$OUT/sd/exposure" 2>/dev/null); results in $OUT"
exit "$rc"
