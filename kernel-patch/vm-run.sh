#!/bin/bash
# Boot the mglrud test kernel under virtme-ng and run the VM test tier
# (pytest tests/vm) inside it, against this checkout.
#
# Usage: kernel-patch/vm-run.sh [options] [-- PYTEST_ARGS...]
#        kernel-patch/vm-run.sh [options] --exec 'COMMAND'
#   --numa            two NUMA nodes (memory split in half, one CPU each)
#   --cpus N          guest CPUs (default 2)
#   --memory SIZE     guest memory (default 2G)
#   --variant NAME    kernel variant: default | debug (lockdep, KASAN, DEBUG_VM) |
#                     unpatched (the default config without the series: the cost baseline) |
#                     stock (Debian's own linux-image-6.1.*-amd64 as shipped, no patch,
#                     fetched by scripts/install-deps stock; docs/stock-kernel.md)
#   --kvm             use KVM (hangs on these machines at the time of writing; TCG is the default)
#   --timeout SECS    kill the guest after this long (default 1800)
#   --qemu-opts OPTS  more qemu options (vng --qemu-opts), e.g. '-icount shift=1,sleep=off'
#                     for guest clocks that count instructions (bench/kernel_cost.py)
#   --out DIR         where the guest writes its results (default: a new temp dir)
#   --exec CMD        run CMD in the guest (cwd = checkout) instead of pytest
#
# Exit status: the guest's pytest (or CMD) exit status; 1 if the kernel log
# has a WARN/BUG/Oops/lockdep/KASAN report; 124 on timeout; 125 if the guest
# never reported (crash, hang, boot failure) — its console log is printed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${MGLRUD_CACHE:-/var/cache/mglrud}

numa=0 cpus=2 memory=2G variant=default kvm=0 timeout=1800 out="" cmd="" qemu_opts=""
while [ $# -gt 0 ]; do
    case "$1" in
        --numa) numa=1 ;;
        --cpus) cpus=$2; shift ;;
        --memory) memory=$2; shift ;;
        --variant) variant=$2; shift ;;
        --kvm) kvm=1 ;;
        --timeout) timeout=$2; shift ;;
        --out) out=$2; shift ;;
        --qemu-opts) qemu_opts=$2; shift ;;
        --exec) cmd=$2; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm-run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '[vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stock=""
if [ "$variant" = stock ]; then
    # Debian's kernel, unpacked with its headers (bcc compiles against them in the guest:
    # guest-run.sh points /lib/modules/$(uname -r)/build and source at them)
    stock=$("$REPO/scripts/install-deps" stock | tail -1)
    image=$(ls "$stock"/boot/vmlinuz-* 2>/dev/null | head -1)
    label="Debian $(basename "$image" | sed 's/^vmlinuz-//') (stock)"
else
    image=$("$HERE/build.sh" "$variant" | tail -1)
    label=$(basename "$(dirname "$(dirname "$(dirname "$(dirname "$image")")")")")
    # The patched source tree, read-only in the guest: tests/vm/test_kselftest_lru_gen.py
    # builds the series' selftest from it
    ksrc=$CACHE/src/linux-$(grep -E '^version=' "$HERE/BASE" | cut -d= -f2)
    [ "$variant" != unpatched ] || ksrc=$ksrc-unpatched   # build.sh keeps it apart
fi
[ -f "$image" ] || { echo "vm-run.sh: no kernel image (build.sh printed '$image')" >&2; exit 125; }
export PATH=$CACHE/venv/bin:$PATH
command -v vng >/dev/null || { echo "vm-run.sh: vng not found; run scripts/install-deps kernel" >&2; exit 125; }

[ -n "$out" ] || out=$(mktemp -d /tmp/mglrud-vm.XXXXXX)
mkdir -p "$out"
rm -f "$out/rc" "$out/guest.log" "$out/dmesg" "$out/console.log"

smp=$cpus
# One socket per node: CPUs of one socket on two nodes trip topology_sane()'s WARN.
[ "$numa" = 1 ] && smp="$cpus,sockets=2,cores=$((cpus / 2)),threads=1"
args=(--disable-microvm --run "$image" --cpus "$smp" --memory "$memory" --rwdir "$out" --verbose)
[ "$kvm" = 1 ] || args+=(--disable-kvm)
[ -z "$qemu_opts" ] || args+=("--qemu-opts=$qemu_opts")  # one word: vng would take an OPTS such as "-cpu ..." for its own option
# The guest sees the host's root, but virtme-ng puts a tmpfs over /var/cache: hand it in
[ -z "$stock" ] || args+=(--rodir "$stock")
[ -z "${ksrc:-}" ] || args+=(--rodir "$ksrc")
if [ "$numa" = 1 ]; then
    [ "$cpus" -ge 2 ] || { echo "vm-run.sh: --numa needs --cpus 2 or more" >&2; exit 2; }
    half=$(( $(numfmt --from=iec "$memory") / 2 / 1048576 ))M
    args+=(--numa "$half,cpus=0" --numa "$half,cpus=1-$((cpus - 1))")
fi

guest=(env "MGLRUD_STOCK=$stock" "MGLRUD_KSRC=${ksrc:-}" bash "$HERE/guest-run.sh" "$out" "$REPO")
if [ -n "$cmd" ]; then
    guest+=(--exec "$cmd")
else
    guest+=(-- "$@")
fi
printf -v guest_cmd '%q ' "${guest[@]}"

say "booting $label ($cpus CPUs, $memory$( [ "$numa" = 1 ] && echo ', 2 NUMA nodes'), $( [ "$kvm" = 1 ] && echo KVM || echo TCG)); results in $out"
# The guest died of an int3 Oops whose breakpoint byte is no longer in memory: the
# Code: line's byte before the <marked> one (RIP is just past the int3) is not cc.
# The kernel had finished patching that site (text_poke_bp: a jump label or
# static call), but a vCPU ran a stale translation of it: a TCG flake, seen at
# boot and, once in a long run, while a test enabled a tracepoint.
stale_int3() {
    [ ! -f "$out/rc" ] || return 1
    grep -m1 -A8 'Oops: int3' "$out/console.log" | grep -m1 'Code:' | grep -qE '[0-9a-f]{2} <' || return 1
    ! grep -m1 -A8 'Oops: int3' "$out/console.log" | grep -m1 'Code:' | grep -qE ' cc <'
}

start=$(date +%s)
# A guest that dies before it runs our script (TCG occasionally trips over the
# kernel's boot-time code patching: an int3 Oops in the first second), or dies of
# that same stale-int3 Oops later, is booted once more and the run starts over,
# and that is said; any other failure after our script started never is.
for attempt in 1 2; do
    rm -f "$out/rc" "$out/dmesg"
    : > "$out/guest.log"
    tail -n +1 -F "$out/guest.log" 2>/dev/null &
    tailpid=$!
    set +e
    (cd "$REPO" && timeout --kill-after=30 "$timeout" vng "${args[@]}" --exec "$guest_cmd") \
        < /dev/null > "$out/console.log" 2>&1
    vng_rc=$?
    set -e
    sleep 1; kill "$tailpid" 2>/dev/null || true; wait "$tailpid" 2>/dev/null || true
    if [ "$attempt" = 1 ] && [ ! -s "$out/guest.log" ] && [ "$vng_rc" != 124 ]; then
        say "the guest died before running the test command; its console said:"
        grep -m1 -A3 -E 'Oops|BUG:|panic' "$out/console.log" >&2 || tail -5 "$out/console.log" >&2
        cp "$out/console.log" "$out/console.boot-failure.log"
        say "booting once more"
        continue
    fi
    if [ "$attempt" = 1 ] && stale_int3; then
        say "the guest died of an int3 Oops at a site the kernel had already patched back (a TCG flake):"
        grep -m1 -A8 'Oops: int3' "$out/console.log" | grep -E 'Oops|RIP|Code' >&2
        cp "$out/console.log" "$out/console.stale-int3.log"
        say "running everything once more in a fresh guest"
        continue
    fi
    break
done
say "guest ran for $(( $(date +%s) - start ))s"

# The guest saves its dmesg; if it died before that, the console has the log.
log=$out/dmesg
[ -s "$log" ] || log=$out/console.log
if grep -nE 'WARNING:|BUG:|Oops|Kernel panic|general protection fault|KASAN:|UBSAN:|possible recursive locking|possible circular locking|inconsistent lock state|suspicious RCU usage|INFO: task .* blocked' "$log" > "$out/splats"; then
    say "kernel reported problems (from $log):"
    first=$(head -1 "$out/splats" | cut -d: -f1)
    sed -n "${first},$((first + 60))p" "$log" >&2
    exit 1
fi
if [ "$vng_rc" = 124 ]; then
    say "timed out after ${timeout}s; last console lines:"; tail -30 "$out/console.log" >&2
    exit 124
fi
if [ ! -f "$out/rc" ]; then
    say "the guest never reported a result (vng exit $vng_rc); last console lines:"
    tail -40 "$out/console.log" >&2
    exit 125
fi
rc=$(cat "$out/rc")
say "guest exit status $rc"
exit "$rc"
