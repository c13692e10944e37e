#!/bin/bash
# In the test guest (run by kernel-patch/vm-run.sh --exec, so as root, with debugfs,
# tracefs and cgroup2 mounted): boot systemd as PID 1 of a new PID and mount namespace
# (container mode, as systemd-nspawn does), with a unit that runs guest.sh and then
# makes the manager exit. Why not `vng --systemd`: see tests/vm/systemd/README.md.
#
# Usage: boot.sh OUT REPO
OUT=$1 REPO=$2
set -eu
mkdir -p "$OUT"
# At boot, systemd-tmpfiles-setup.service empties /tmp (Debian's tmp.conf: `D /tmp`).
# The guest's /tmp is an overlay over the host's, so a checkout under /tmp (a CI
# clone) would vanish under the test unit (bash exit 127, guest.sh not found). So
# the manager gets a fresh tmpfs on /tmp, and reaches the checkout and the output
# directory through binds under its own /run, mounted before systemd starts.
HOST_OUT=$OUT HOST_REPO=$REPO
OUT=/run/mglrud-vmtest/out REPO=/run/mglrud-vmtest/repo
cat > /etc/systemd/system/mglrud-vmtest.service <<UNIT
[Unit]
Description=mglrud systemd test (tests/vm/systemd/guest.sh)
After=basic.target systemd-journald.service
SuccessAction=exit-force
FailureAction=exit-force

[Service]
Type=oneshot
ExecStart=/bin/bash $REPO/tests/vm/systemd/guest.sh $OUT $REPO
TimeoutStartSec=38min
TimeoutStopSec=30s
UNIT
# The manager logs to the journal (guest.sh greps it for the watchdog kill).
exec timeout --kill-after=30 2520 unshare --pid --fork --mount --propagation private -- /bin/bash -c '
    set -e
    mount -t tmpfs -o mode=755 tmpfs /run        # the manager'"'"'s own /run
    mkdir -p '"$OUT"' '"$REPO"'
    mount --bind '"$HOST_OUT"' '"$OUT"'
    mount --bind '"$HOST_REPO"' '"$REPO"'
    mount -t tmpfs -o mode=1777 tmpfs /tmp        # what tmpfiles may empty
    mount -t proc proc /proc                      # this PID namespace'"'"'s /proc
    exec env -i container=mglrud-vmtest PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /lib/systemd/systemd --system --unit=mglrud-vmtest.service --show-status=false
' > "$HOST_OUT/systemd.log" 2>&1 < /dev/null
