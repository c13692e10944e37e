"""Memory: giving freed heap back to the kernel (glibc's malloc_trim(3)), and the collector.

A render of /metrics at thousands of memcgs makes tens of MiB of short-lived
objects (lines, then their bytes); CPython frees them, but glibc keeps the heap
pages (and raises its mmap threshold to the largest block freed, so the next big
buffer lands on the heap too), and the daemon's RSS stays at its peak. One
malloc_trim(0) after such a burst returns the free pages (madvise) -- a few
milliseconds at ~100 MiB of heap, once per rendered snapshot.

tune() (the daemon calls it once, at start) fixes glibc's mmap threshold at 1 MiB
(mallopt(3) M_MMAP_THRESHOLD), which also turns its raising off: a response body
or a rendered snapshot (MiB each) is then its own mapping, unmapped when freed.

Not glibc (musl, another libc): nothing to do, both return False.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import time

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 20
# gc_paused(settle=True): at most this long between full collections (see there)
FULL_COLLECTION_EVERY = 300.0
_now = time.monotonic
_next_full_collection = 0.0

_trim = _mallopt = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _trim, _mallopt = _libc.malloc_trim, _libc.mallopt
    _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    _mallopt.argtypes, _mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
except (OSError, AttributeError):
    _trim = _mallopt = None


def tune() -> bool:
    """Allocations from MMAP_THRESHOLD on get their own mapping, always; False if not glibc."""
    return _mallopt is not None and _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def trim() -> bool:
    """Return freed heap pages to the kernel; False where the libc has no malloc_trim."""
    if _trim is None:
        return False
    _trim(0)
    return True


@contextlib.contextmanager
def gc_paused(collect: int | None = None, settle: bool = False):
    """The cyclic garbage collector off for a burst of allocations that makes no cycles.

    lru_gen's parse makes ~40k tuples and lists at 3,000 memcgs, so the collector ran
    dozens of times in it, now and then over every object the daemon holds (the older
    generations), for objects that it cannot free: the parse's own. 10-30 % of a parse.
    Reference counting still frees everything as usual; the collector runs at the
    next allocations after it -- or at once, `collect` being the generation to collect,
    when the pause ends the outermost one (it then sees the burst's survivors once).

    `settle`: when the pause ends the outermost one, the burst's survivors (and every other
    tracked object) go to the oldest generation at once (gc.freeze() then gc.unfreeze(), both
    documented to do just that), and the young generation's count starts again at 0. Why: at
    3,000 memcgs a cycle leaves ~40k new objects (the read's lruvecs), which the next young
    collection traversed, then the middle one: 10-20 ms a cycle, a sixth of it, to free
    nothing (they go by reference counting when the next read replaces them). Garbage in
    reference cycles goes there too (one made in the burst, or by an HTTP thread before it: a
    /snapshot.json request's encoder closures), and settling never counts towards CPython's
    trigger of a full collection: so once FULL_COLLECTION_EVERY seconds have passed, a settle
    is a full collection instead (it too leaves the survivors in the oldest generation; tens
    of ms at 3,000 memcgs, every 5 minutes)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if settle:
                _settle()
            gc.enable()
            if collect is not None:
                gc.collect(collect)


def _settle() -> None:
    global _next_full_collection
    now = _now()
    if now >= _next_full_collection:
        _next_full_collection = now + FULL_COLLECTION_EVERY
        gc.collect()
    else:
        gc.freeze()
        gc.unfreeze()
