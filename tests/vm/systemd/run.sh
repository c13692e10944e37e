#!/bin/bash
# Host side: boot the project's kernel (kernel-patch/vm-run.sh) and, in it, systemd as PID 1 of a
# container (boot.sh), which runs guest.sh: make install, systemctl start/reload/watchdog, security;
# then the Debian package: apt install, start, reload, stop, apt purge.
#
# Usage: tests/vm/systemd/run.sh [--deb-only] [OUT]   (default OUT: a new /tmp/mglrud-systemd.XXXXXX)
#   --deb-only: only the Debian package part (apt install ... apt purge), not make install's
# Exit status: the number of failed checks (0 = all passed); 125 if the guest never reported.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
deb_only=
[ "${1:-}" = --deb-only ] && { deb_only=1; shift; }
OUT=${1:-$(mktemp -d /tmp/mglrud-systemd.XXXXXX)}
mkdir -p "$OUT/sd"
if [ -n "$deb_only" ]; then echo deb > "$OUT/sd/phases"; else rm -f "$OUT/sd/phases"; fi
rm -f "$OUT/sd/rc" "$OUT/sd/guest.log" "$OUT"/sd/mglrud_*.deb
# The Debian package the guest installs and purges after the make-install checks (reused while
# the tree is unchanged); without it guest.sh fails that part, saying so.
if deb=$("$REPO/scripts/build-deb"); then cp "$deb" "$OUT/sd/"; else echo "run.sh: scripts/build-deb failed" >&2; fi
"$REPO/kernel-patch/vm-run.sh" --numa --out "$OUT" --timeout 2760 --exec "bash tests/vm/systemd/boot.sh $OUT/sd $REPO"
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
