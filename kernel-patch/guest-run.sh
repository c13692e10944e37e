#!/bin/bash
# Runs inside the test guest (started by vm-run.sh through vng --exec).
# Mounts what the tests need, runs pytest tests/vm (or --exec CMD) against the
# checkout, and leaves its results in OUT: guest.log, rc, dmesg.
#
# Usage: guest-run.sh OUT REPO (-- PYTEST_ARGS... | --exec CMD)
OUT=$1 REPO=$2
shift 2

exec > "$OUT/guest.log" 2>&1

mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
if ! mount | grep -q 'type cgroup2'; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
# Give child cgroups the memory controller: memcgs are what mglrud ages.
echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true

echo "[guest] kernel $(uname -r), $(nproc) CPUs, $(grep MemTotal /proc/meminfo | awk '{print $2/1024 " MiB"}'), nodes: $(ls -d /sys/devices/system/node/node* | xargs -n1 basename | tr '\n' ' ')"
echo "[guest] lru_gen enabled: $(cat /sys/kernel/mm/lru_gen/enabled 2>/dev/null || echo missing)"

cd "$REPO" || exit 1
export PYTHONDONTWRITEBYTECODE=1 MGLRUD_IN_VM=1 HOME=/tmp
if [ "$1" = --exec ]; then
    bash -c "$2"
    rc=$?
else
    shift
    # Default to the whole VM tier unless the arguments name tests themselves.
    paths=(tests/vm)
    for a in "$@"; do case "$a" in tests/*) paths=() ;; esac; done
    /usr/bin/python3 -m pytest -p no:cacheprovider "${paths[@]}" "$@"
    rc=$?
fi
dmesg > "$OUT/dmesg"
echo "$rc" > "$OUT/rc"
sync
