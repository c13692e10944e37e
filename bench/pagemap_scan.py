"""Residency by PAGEMAP_SCAN (Linux 6.7+, ioctl on /proc/PID/pagemap) against read() of pagemap,
over this process's own 1 GiB anonymous mapping, every page touched, in 4 KiB pages and in THPs
(issue 19: the read is 17-27 ms a GiB of kernel time, the goal 10 ms).

PAGEMAP_SCAN (Documentation/admin-guide/mm/pagemap.rst, "Pagemap Scan IOCTL"; struct pm_scan_arg
and struct page_region in include/uapi/linux/fs.h) returns runs of pages with the same categories
(present, file, huge, ...) instead of one 64-bit entry per page; it gives no PFN, so no NUMA node
(mglrud's two-node split needs the PFNs or move_pages(2)). It still walks every PTE.

  /usr/bin/python3 bench/pagemap_scan.py [--out bench/results/pagemap_scan.txt]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import platform
import statistics
import struct
import sys
import time
from pathlib import Path

SIZE = 1 << 30
PAGEMAP_SCAN = (3 << 30) | (96 << 16) | (ord("f") << 8) | 16  # _IOWR('f', 16, struct pm_scan_arg)
IS_FILE, IS_PRESENT, IS_HUGE = 1 << 2, 1 << 3, 1 << 6


def measure(huge: bool, runs: int = 7) -> str:
    page = os.sysconf("SC_PAGE_SIZE")
    m = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    for off in range(0, SIZE, page):
        m[off] = 1
    start = ctypes.addressof(ctypes.c_char.from_buffer(m))
    vec = (ctypes.c_uint64 * (3 * 4096))()

    def scan():
        arg = bytearray(struct.pack("<12Q", 96, 0, start, start + SIZE, 0, ctypes.addressof(vec), 4096, 0, 0,
                                    IS_PRESENT, 0, IS_PRESENT | IS_FILE | IS_HUGE))
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            n = fcntl.ioctl(f.fileno(), PAGEMAP_SCAN, arg, True)
        return [(vec[3 * i], vec[3 * i + 1], vec[3 * i + 2]) for i in range(n)]

    def read():
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(start // page * 8)
            return f.read(SIZE // page * 8)

    reads, scans = [], []
    for _ in range(runs):  # CPU time: the kernel's walk is this process's system time
        t = time.process_time()
        entries = read()
        reads.append(time.process_time() - t)
        t = time.process_time()
        ranges = scan()
        scans.append(time.process_time() - t)
    present = sum((e - s) // page for s, e, _ in ranges)
    del entries
    m.close()
    assert present == SIZE // page, (present, SIZE // page)
    return (f"| {'THP (MADV_HUGEPAGE)' if huge else '4 KiB pages (MADV_NOHUGEPAGE)'} | "
            f"{statistics.median(reads) * 1e3:.1f} ms | {statistics.median(scans) * 1e3:.2f} ms | "
            f"{len(ranges)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pagemap_scan.txt"))
    args = p.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"# bench/pagemap_scan.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
             f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average {load}; CPU time, median of 7",
             "", "| 1 GiB anonymous, every page present | read() of pagemap | PAGEMAP_SCAN (present/file/huge runs) "
             "| runs returned |", "|---|---|---|---|", measure(False), measure(True)]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
