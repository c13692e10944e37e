"""A process with one hot and one cold mapping, for the /proc source's tests and fixtures.

Maps two anonymous regions of --size bytes each (THP off, so the accessed bits
are per 4 KiB page): HOT is written in a loop, COLD is written once. With
--file it also maps PATH (created, --size long) and reads it once: a file
mapping for the fixtures. With --memfd it maps a memfd (shmem) and writes it once.

It prints one JSON line once every region is resident:
  {"pid": ..., "hot": [start, end], "cold": [start, end], "file": [...], "memfd": [...]}
and then writes the number of completed hot passes to --passes (if given)
after each pass, so a test can wait for "two more passes" without timing
anything. It stops by itself after --seconds (a bound, not a timing) or when
its parent exits.

Usage: python3 procfs_workload.py --size 16M [--passes FILE] [--file PATH] [--memfd] [--seconds 300] [--pause 0.02]
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
PAGE = mmap.PAGESIZE
RW = mmap.PROT_READ | mmap.PROT_WRITE


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def check(ok: bool, what: str) -> None:
    if not ok:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def map_(n: int, prot: int, flags: int, fd: int = -1) -> int:
    addr = libc.mmap(None, n, prot, flags, fd, 0)
    check(addr not in (None, ctypes.c_void_p(-1).value), "mmap")
    return addr


def anon_pair(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two anonymous regions with a PROT_NONE page between, so the kernel cannot merge them into one VMA."""
    base = map_(2 * n + PAGE, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    check(libc.mprotect(base + n, PAGE, 0) == 0, "mprotect")  # PROT_NONE
    # THP off: accessed bits then count 4 KiB pages, and khugepaged leaves the cold region alone.
    check(libc.madvise(base, 2 * n + PAGE, mmap.MADV_NOHUGEPAGE) == 0, "madvise")
    return (base, base + n), (base + n + PAGE, base + 2 * n + PAGE)


def read_once(start: int, n: int) -> int:
    total = 0
    for off in range(0, n, PAGE):
        total += ctypes.c_char.from_address(start + off).value[0]
    return total


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=size, default=16 << 20)
    p.add_argument("--passes", help="file to write the number of completed hot passes to")
    p.add_argument("--file", help="also map this file, created --size long, and read it once")
    p.add_argument("--memfd", action="store_true", help="also map a memfd and write it once")
    p.add_argument("--seconds", type=float, default=300, help="stop after this long at the latest")
    p.add_argument("--pause", type=float, default=0.02, help="sleep between hot passes")
    args = p.parse_args()
    n = args.size

    hot, cold = anon_pair(n)
    info = {"pid": os.getpid(), "hot": hot, "cold": cold}
    ctypes.memset(cold[0], 1, n)
    if args.file:
        fd = os.open(args.file, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, n)
        os.pwrite(fd, b"x" * n, 0)
        start = map_(n, mmap.PROT_READ, mmap.MAP_SHARED, fd)
        read_once(start, n)
        info["file"] = (start, start + n)
    if args.memfd:
        mfd = os.memfd_create("mglrud-test")
        os.ftruncate(mfd, n)
        start = map_(n, RW, mmap.MAP_SHARED, mfd)
        ctypes.memset(start, 2, n)
        info["memfd"] = (start, start + n)
    ctypes.memset(hot[0], 1, n)
    print(json.dumps(info), flush=True)

    parent = os.getppid()
    deadline = time.monotonic() + args.seconds
    passes = 0
    # Stop at the deadline or when the parent goes away, so a crashed test leaves nothing behind.
    while time.monotonic() < deadline and os.getppid() == parent:
        ctypes.memset(hot[0], passes & 0xFF, n)
        passes += 1
        if args.passes:
            tmp = args.passes + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(passes))
            os.replace(tmp, args.passes)
        time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
