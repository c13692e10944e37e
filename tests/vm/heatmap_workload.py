"""A process with a hot and a never-touched-again anonymous mapping at fixed, region-aligned addresses.

HOT (--hot bytes at 0x100000000000) is written in a loop; COLD (--cold bytes at
0x100010000000) is written once, before "ready", and never again. Both are
2 MiB aligned, so each of mglrud's 2 MiB regions lies in one of them. THP is off
(accessed bits per 4 KiB page). Each hot pass starts with an mprotect round
trip over HOT: it flushes the TLB, so the next writes set the accessed bits
that aging cleared (the CPU would otherwise use its cached translations).

Joins --cgroup before allocating, so the memory is charged to that memcg.
Prints one JSON line {"pid", "hot": [start, end], "cold": [start, end]} once both
are resident; stops after --seconds or when its parent exits.
"""

import argparse
import ctypes
import json
import mmap
import os
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
RW = mmap.PROT_READ | mmap.PROT_WRITE
MAP_FIXED_NOREPLACE = 0x100000
HOT_AT, COLD_AT = 0x1000_0000_0000, 0x1000_1000_0000


def check(ok: bool, what: str) -> None:
    if not ok:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def map_at(addr: int, n: int) -> int:
    got = libc.mmap(addr, n, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    check(got == addr, f"mmap at {addr:#x}")
    check(libc.madvise(addr, n, mmap.MADV_NOHUGEPAGE) == 0, "madvise")
    return addr


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hot", type=int, default=16 << 20)
    p.add_argument("--cold", type=int, default=32 << 20)
    p.add_argument("--cgroup")
    p.add_argument("--seconds", type=float, default=900)
    args = p.parse_args()
    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    hot, cold = map_at(HOT_AT, args.hot), map_at(COLD_AT, args.cold)
    ctypes.memset(cold, 1, args.cold)
    ctypes.memset(hot, 1, args.hot)
    print(json.dumps({"pid": os.getpid(), "hot": [hot, hot + args.hot], "cold": [cold, cold + args.cold]}),
          flush=True)
    parent, deadline, n = os.getppid(), time.monotonic() + args.seconds, 0
    while time.monotonic() < deadline and os.getppid() == parent:
        check(libc.mprotect(hot, args.hot, mmap.PROT_READ) == 0, "mprotect")
        check(libc.mprotect(hot, args.hot, RW) == 0, "mprotect")
        n += 1
        ctypes.memset(hot, n & 0xFF, args.hot)
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
