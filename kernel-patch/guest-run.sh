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

# Debian's stock kernel (vm-run.sh --variant stock): virtme-ng links /lib/modules/$(uname -r)
# (on a tmpfs) to the unpacked package, whose build/source links are absolute
# (/usr/src/linux-headers-*), i.e. dangling here. bcc looks for the headers through
# them (the kernel has no CONFIG_IKHEADERS), so make a directory with the same
# entries whose build/source point into the unpacked linux-headers packages.
if [ -n "${MGLRUD_STOCK:-}" ]; then
    kver=$(uname -r)
    mods=/lib/modules/$kver
    if [ -L "$mods" ] || [ ! -e "$mods" ]; then
        rm -f "$mods" && mkdir -p "$mods" && for f in "$MGLRUD_STOCK/lib/modules/$kver"/*; do
            case "$(basename "$f")" in build|source) ;; *) ln -s "$f" "$mods/" ;; esac
        done
    fi
    ln -sfn "$MGLRUD_STOCK/usr/src/linux-headers-$kver" "$mods/build"
    ln -sfn "$MGLRUD_STOCK/usr/src/linux-headers-${kver%-*}-common" "$mods/source"
    ls "$mods/build/include/generated/autoconf.h" "$mods/source/include/linux/mm.h" >/dev/null \
        || echo "[guest] the stock kernel's headers are not where bcc looks ($mods/build, $mods/source)"
fi
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
