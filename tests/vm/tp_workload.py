"""A workload for the tracepoint tests: maps memory at fixed addresses and
touches exactly the pages it is told to, so a test knows which accessed bits
the kernel will find.

It reads commands on stdin, one per line, and answers "ok" (or "error ...")
on stdout after each:

  map NAME ADDR NPAGES anon [thp] [node=N]   anonymous, private, read-write
  map NAME ADDR NPAGES file PATH             PATH, shared, read-only
  touch NAME all | I,J,K...                  flush the mapping from the TLB,
                                             then write (anon) or read (file)
                                             one byte of each page given
  drain                                      fault in DRAIN_PAGES new pages
                                             elsewhere (see drain())
  exit

Mappings use MAP_FIXED_NOREPLACE, so they land exactly at ADDR or fail. A
file is dropped from the page cache (POSIX_FADV_DONTNEED) before it is mapped,
so the pages this process faults in are charged to its own memcg. "thp"
asks for transparent huge pages (MADV_HUGEPAGE; ADDR must be 2 MiB aligned),
"node=N" binds the memory to node N (mbind MPOL_BIND).

Usage: python3 tp_workload.py [--cgroup DIR] [--node N] [--cpu N]
"""

import argparse
import ctypes
import ctypes.util
import os
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
DRAIN_PAGES = 64  # more than twice a per-CPU folio batch (PAGEVEC_SIZE, 31)

PROT_NONE, PROT_READ, PROT_WRITE = 0x0, 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_HUGEPAGE = 14
MPOL_BIND = 2
SYS_MBIND, SYS_SET_MEMPOLICY = 237, 238  # x86-64

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.syscall.restype = ctypes.c_long


def check(ok: bool, what: str) -> None:
    if not ok:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class Mapping:
    def __init__(self, addr: int, npages: int, kind: str, opts: list[str]):
        self.addr, self.npages, self.kind = addr, npages, kind
        self.length = length = npages * PAGE
        if kind == "anon":
            fd, prot, flags = -1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
        elif kind == "file":
            fd = os.open(opts[0], os.O_RDONLY)
            if os.fstat(fd).st_size < length:
                raise ValueError(f"{opts[0]} is shorter than {npages} pages")
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
            prot, flags = PROT_READ, MAP_SHARED
        else:
            raise ValueError(f"unknown mapping kind {kind!r}")
        self.prot = prot
        got = libc.mmap(addr, length, prot, flags | MAP_FIXED_NOREPLACE, fd, 0)
        check(got not in (None, ctypes.c_void_p(-1).value), f"mmap at {addr:#x}")
        if got != addr:  # kernels before 4.17 ignore MAP_FIXED_NOREPLACE
            raise OSError(f"mmap gave {got:#x}, not {addr:#x}")
        if fd >= 0:
            os.close(fd)
        for opt in opts[1:] if kind == "file" else opts:
            if opt == "thp":
                check(libc.madvise(addr, length, MADV_HUGEPAGE) == 0, "madvise(MADV_HUGEPAGE)")
            elif opt.startswith("node="):
                mask = ctypes.c_ulong(1 << int(opt[5:]))
                rc = libc.syscall(SYS_MBIND, ctypes.c_void_p(addr), ctypes.c_ulong(length),
                                  MPOL_BIND, ctypes.byref(mask), ctypes.c_ulong(64 + 1), 0)
                check(rc == 0, f"mbind to {opt}")
            else:
                raise ValueError(f"unknown option {opt!r}")

    def touch(self, pages: list[int]) -> None:
        # The CPU sets an accessed bit when it walks the page table, not on a
        # TLB hit, and the aging clears accessed bits without flushing the TLB.
        # An mprotect() round trip flushes this range from the TLB (and keeps
        # the accessed bits as they are), so each touch below is seen.
        check(libc.mprotect(self.addr, self.length, PROT_NONE) == 0, "mprotect(PROT_NONE)")
        check(libc.mprotect(self.addr, self.length, self.prot) == 0, "mprotect back")
        for i in pages:
            if not 0 <= i < self.npages:
                raise ValueError(f"page {i} outside 0..{self.npages - 1}")
            byte = ctypes.c_ubyte.from_address(self.addr + i * PAGE)
            if self.kind == "anon":
                # A store without a load: a first load would map the (huge)
                # zero page, and a store to that one falls back to 4 KiB pages.
                byte.value = 1
            else:
                _ = byte.value


def drain() -> None:
    """Get this CPU's folios out of its per-CPU LRU batch and onto the LRU.

    A new folio waits in a per-CPU batch before it is added to an LRU list,
    and while it waits the aging cannot move it (it marks it referenced,
    old_gen -1). Nothing a test can call drains another CPU's batch cheaply,
    but faulting in more new folios than a batch holds, on the same CPU (see
    --cpu), pushes the earlier ones through.
    """
    length = DRAIN_PAGES * PAGE
    addr = libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    check(addr not in (None, ctypes.c_void_p(-1).value), "mmap for drain")
    for i in range(DRAIN_PAGES):
        ctypes.c_ubyte.from_address(addr + i * PAGE).value = 1
    check(libc.munmap(addr, length) == 0, "munmap after drain")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cgroup", help="move into this cgroup v2 directory first")
    p.add_argument("--node", type=int, help="allocate from this NUMA node only (set_mempolicy MPOL_BIND)")
    p.add_argument("--cpu", type=int, help="run on this CPU only, so that drain works")
    args = p.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if args.node is not None:
        # Covers page cache too, which mbind() of a file mapping does not.
        mask = ctypes.c_ulong(1 << args.node)
        rc = libc.syscall(SYS_SET_MEMPOLICY, MPOL_BIND, ctypes.byref(mask), ctypes.c_ulong(64 + 1))
        check(rc == 0, f"set_mempolicy to node {args.node}")

    maps: dict[str, Mapping] = {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "map":
                name, addr, npages, kind = words[1], int(words[2], 0), int(words[3]), words[4]
                maps[name] = Mapping(addr, npages, kind, words[5:])
            elif words[0] == "touch":
                m = maps[words[1]]
                pages = range(m.npages) if words[2] == "all" else [int(w) for w in words[2].split(",")]
                m.touch(list(pages))
            elif words[0] == "drain":
                drain()
            elif words[0] == "exit":
                print("ok", flush=True)
                return 0
            else:
                raise ValueError(f"unknown command {words[0]!r}")
        except Exception as e:  # reported to the test, which fails with it
            print(f"error {type(e).__name__}: {e}", flush=True)
            continue
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
