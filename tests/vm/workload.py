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


def touch(buf: mmap.mmap, start: int, end: int) -> None:
    for off in range(start, end, PAGE):
        buf[off] = (buf[off] + 1) & 0xFF


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=size, required=True)
    p.add_argument("--hot", type=size, default=0, help="bytes touched in a loop after the first pass")
    p.add_argument("--file", help="map this file (created, SIZE long) instead of anonymous memory")
    p.add_argument("--cgroup", help="move into this cgroup v2 directory first")
    p.add_argument("--seconds", type=float, default=600, help="stop after this long")
    args = p.parse_args()

    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if args.file:
        fd = os.open(args.file, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, args.size)
        buf = mmap.mmap(fd, args.size, mmap.MAP_SHARED)
    else:
        buf = mmap.mmap(-1, args.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(buf, 0, args.size)
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    print(f"ready {addr:#x}", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if args.hot:
            touch(buf, 0, args.hot)
            time.sleep(0.05)
        else:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
