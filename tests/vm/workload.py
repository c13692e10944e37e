"""A memory workload with a known access pattern, for VM tests.

Maps SIZE bytes of anonymous memory (or of a file with --file), touches every
page once, then keeps touching the first HOT bytes in a loop (--hot), or sleeps.
It prints "ready <address>" once the first pass is done, so a test knows the
pages are resident before it ages anything.

Usage: python3 workload.py --size 256M [--hot 64M] [--file PATH] [--cgroup DIR]
"""

import argparse
import mmap
import os
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def touch(buf: mmap.mmap, start: int, end: int, write: bool = True) -> int:
    total = 0
    for off in range(start, end, PAGE):
        if write:
            buf[off] = (buf[off] + 1) & 0xFF
        else:
            total += buf[off]
    return total


def _address(buf: mmap.mmap, writable: bool) -> int:
    """The mapping's start address: ctypes needs a writable buffer, so a
    read-only mapping is found in /proc/self/maps by its size instead."""
    if writable:
        import ctypes
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo == len(buf) and line.split()[1].startswith("r--s"):
            return lo
    raise LookupError("mapping not found in /proc/self/maps")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=size, required=True)
    p.add_argument("--hot", type=size, default=0, help="bytes touched in a loop after the first pass")
    p.add_argument("--file", help="map this file (created, SIZE long) instead of anonymous memory")
    p.add_argument("--readonly", action="store_true",
                   help="map --file read-only and touch by reading: page cache, not shmem "
                        "(in the guest /tmp is tmpfs, whose pages MGLRU counts as anon)")
    p.add_argument("--cgroup", help="move into this cgroup v2 directory first")
    p.add_argument("--seconds", type=float, default=600, help="stop after this long")
    args = p.parse_args()

    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if args.file and args.readonly:
        fd = os.open(args.file, os.O_RDONLY)
        buf = mmap.mmap(fd, args.size, mmap.MAP_SHARED, mmap.PROT_READ)
    elif args.file:
        fd = os.open(args.file, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, args.size)
        buf = mmap.mmap(fd, args.size, mmap.MAP_SHARED)
    else:
        buf = mmap.mmap(-1, args.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    write = not args.readonly
    touch(buf, 0, args.size, write)
    addr = _address(buf, write)
    print(f"ready {addr:#x}", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if args.hot:
            touch(buf, 0, args.hot, write)
            time.sleep(0.05)
        else:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
