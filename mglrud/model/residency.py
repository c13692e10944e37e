"""Residency of a process, per region, node and LRU, from /proc/PID/pagemap (pure maths).

pagemap has one u64 per virtual page (Documentation/admin-guide/mm/pagemap.rst):
present, file/shared-anon, and the page frame number (hidden without
CAP_SYS_ADMIN); the node of a frame comes from the zones of /proc/zoneinfo, or,
without frame numbers, from move_pages(2) statuses (sources/bpf_heat.py reads
them). What the BPF source's heat is measured against: regions resident but never
found accessed show up as idle.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


PM_PRESENT = 1 << 63
PM_FILE = 1 << 61  # file page or shared anon (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    path: str
    shmem: bool  # swap-backed although file-like: on the anon LRU


def parse_zoneinfo(text: str) -> list[tuple[int, int, int]]:
    """/proc/zoneinfo -> sorted (start_pfn, end_pfn, node) of every populated zone."""
    out, node, start, spanned = [], None, None, None
    for line in text.splitlines():
        w = line.split()
        if len(w) >= 4 and w[0] == "Node" and w[2] == "zone":
            node, start, spanned = int(w[1].rstrip(",")), None, None
        elif len(w) == 2 and w[0] == "spanned":
            spanned = int(w[1])
        elif len(w) == 2 and w[0] == "start_pfn:":
            start = int(w[1])
            if node is not None and spanned:
                out.append((start, start + spanned, node))
    return sorted(out)


def pfn_node_table(zones: list[tuple[int, int, int]]):
    """pfn -> node from parse_zoneinfo()'s ranges (-1 outside every zone)."""
    starts = [s for s, _, _ in zones]

    def node(pfn: int) -> int:
        i = bisect.bisect_right(starts, pfn) - 1
        return zones[i][2] if i >= 0 and pfn < zones[i][1] else -1
    node.zones = list(zones)  # residency() looks every page up at once with these
    return node


def residency(vma: Vma, entries, page_size: int, region_shift: int, node_of) -> dict:
    """pagemap entries (one u64 per page of vma: the bytes pagemap gives, or ints) -> {(region,
    node, lru): resident pages}.

    lru follows where the kernel puts the page: a page of a private mapping that
    pagemap does not flag as file (anonymous, or a copy-on-write copy) is anon;
    a file page is file unless the mapping is shmem (swap-backed: anon LRU).

    With a node_of from pfn_node_table() every page is classified at once (numpy: about
    ten times faster than a Python step per page); any other node_of is called per page."""
    zones = getattr(node_of, "zones", None)
    if zones is not None:
        return _residency_zones(vma, entries, page_size, region_shift, zones)
    if isinstance(entries, (bytes, bytearray, memoryview)):
        entries = memoryview(entries).cast("B").cast("Q")  # native order: pagemap is the host's
    out: dict = {}
    pages_per_region_shift = region_shift - (page_size.bit_length() - 1)
    first = vma.start // page_size
    for i, e in enumerate(entries):
        if not e & PM_PRESENT:
            continue
        lru = "file" if (e & PM_FILE) and not vma.shmem else "anon"
        pfn = e & PM_PFN_MASK
        node = node_of(pfn) if pfn else -1
        key = ((first + i) >> pages_per_region_shift, node, lru)
        out[key] = out.get(key, 0) + 1
    return out


def _node_lookup(zones):
    """(bounds, node + 1 per interval) for np.searchsorted: zones of one node that touch merged,
    interval [0, 1) unknown (PFN 0: pagemap hides PFNs without CAP_SYS_ADMIN), gaps unknown."""
    merged: list[list[int]] = []
    for s, e, n in sorted(zones):
        if merged and merged[-1][2] == n and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e, n])
    bounds, code = [0, 1], [0, 0]  # code[k]: pfn in [bounds[k-1], bounds[k]); index 0 never used
    for s, e, n in merged:
        s = max(s, 1)
        if s >= e:
            continue
        if s > bounds[-1]:
            bounds.append(s)
            code.append(0)  # the gap before the zone
        elif s < bounds[-1]:  # overlapping zones (not seen in zoneinfo): the first one wins
            s = bounds[-1]
            if s >= e:
                continue
        bounds.append(e)
        code.append(n + 1)
    return bounds, code + [0]  # beyond the last zone


def _residency_zones(vma: Vma, entries, page_size: int, region_shift: int, zones) -> dict:
    """residency() with node_of = pfn_node_table(zones), vectorised; the same dict. On the
    pagemap bytes as read (no int per page): one small class per page, counted per region
    over a (regions, pages per region) view."""
    import sys

    import numpy as np  # imported on first use: only the BPF source reads residency

    if isinstance(entries, (bytes, bytearray, memoryview)):
        e = np.frombuffer(entries, dtype=np.uint64)  # pagemap's bytes as they are
    else:
        e = np.asarray(entries, dtype=np.uint64)
    n = len(e)
    if not n:
        return {}
    # the flags are in the top byte (bit 7 present, bit 5 file): one byte a page, not a u64
    top = e.view(np.uint8)[7::8] if sys.byteorder == "little" else (e >> np.uint64(56)).astype(np.uint8)
    bounds, code = _node_lookup(zones)
    # class per page: 0 absent, else 1 + 2 * (node + 1) + file  (node + 1 = 0: unknown)
    node1 = np.array(code, dtype=np.int32)[np.searchsorted(
        np.array(bounds, dtype=np.uint64), e & np.uint64(PM_PFN_MASK), side="right")]
    cls = node1 * 2 + 1
    if not vma.shmem:
        cls += (top >> 5) & 1
    cls[top < 0x80] = 0
    # pages of each region side by side: pad the mapping out to whole regions
    per = 1 << (region_shift - (page_size.bit_length() - 1))
    first = vma.start // page_size
    head = first % per
    rows = -(-(head + n) // per)
    grid = np.zeros(rows * per, dtype=np.int32)
    grid[head:head + n] = cls
    grid = grid.reshape(rows, per)
    out: dict = {}
    lo = first // per
    for c in np.flatnonzero(np.bincount(cls)[1:]).tolist():
        c += 1
        counts = np.count_nonzero(grid == c, axis=1)
        node, lru = (c - 1) // 2 - 1, "file" if (c - 1) % 2 else "anon"
        for r in np.flatnonzero(counts).tolist():
            out[(lo + r, node, lru)] = int(counts[r])
    return out


# The top byte of a pagemap entry (little-endian u64): bit 7 present, bit 5 file/shared.
_CLASS_ANON = bytes(1 if b & 0x80 else 0 for b in range(256))  # present -> 1
_CLASS_FILE = bytes((2 if b & 0x20 else 1) if b & 0x80 else 0 for b in range(256))  # present: 1 anon, 2 file


def residency_one_node(vma: Vma, data: bytes, page_size: int, region_shift: int, node: int) -> dict:
    """residency() for a machine with one node, on the raw pagemap bytes: the same
    result, counted at C speed (bytes.translate and count per region) instead of
    one Python step per page."""
    out: dict = {}
    top = data[7::8].translate(_CLASS_ANON if vma.shmem else _CLASS_FILE)
    for region, i, j in region_spans(vma, len(top), page_size, region_shift):
        chunk = top[i:j]
        for cls, lru in ((1, "anon"), (2, "file")):
            n = chunk.count(cls)
            if n:
                out[(region, node, lru)] = n
    return out


def region_spans(vma: Vma, pages: int, page_size: int, region_shift: int):
    """(region, i, j) for each region the first `pages` pages of vma fall in: pages [i, j)."""
    per = 1 << (region_shift - (page_size.bit_length() - 1))
    first = vma.start // page_size
    i = 0
    while i < pages:
        region = (first + i) // per
        j = min(pages, (region + 1) * per - first)
        yield region, i, j
        i = j


# Residency by node without page frame numbers. pagemap shows PFNs only to CAP_SYS_ADMIN, which
# the shipped unit does not keep; move_pages(2) with nodes=NULL answers "which node is this page
# on" for the caller's own pages and those of processes it may ptrace (PTRACE_MODE_READ_REALCREDS,
# mm/migrate.c find_mm_struct()), i.e. with the CAP_SYS_PTRACE the /proc source already needs.
# Its status array gives per page a node (>= 0) or -errno (-ENOENT: not present). The counts
# below take the low byte of each status and count (node, lru) pairs per region with bytes.count,
# at C speed, instead of one Python int per page.
NODE_BYTES_MAX = 64  # nodes 0..63 are counted at C speed; a chunk with a higher node takes the slow way
_UNKNOWN = 0x7F  # any negative status (low byte) becomes this: node -1
_NODE_BYTE = bytes(b if b < NODE_BYTES_MAX else _UNKNOWN for b in range(256))
# pagemap's top byte -> a tag from a range no node byte can take, so (node, tag) pairs in an
# interleaved buffer can only match at even offsets: 0xA0 absent, 0xA1 anon, 0xA2 file
_TAG_ANON = bytes(0xA1 if b & 0x80 else 0xA0 for b in range(256))  # present -> anon (shmem)
_TAG_FILE = bytes((0xA2 if b & 0x20 else 0xA1) if b & 0x80 else 0xA0 for b in range(256))


def residency_by_status(vma: Vma, data: bytes, status: bytes, page_size: int, region_shift: int) -> dict:
    """pagemap bytes (8 per page of vma) and move_pages(2)'s status (4 bytes, little-endian int,
    per page) -> {(region, node, lru): resident pages}; the same classes as residency(); a page
    pagemap shows present whose status is an error (it went away between the two) is on node -1.
    Nodes must be below NODE_BYTES_MAX (the caller checks)."""
    out: dict = {}
    tags = data[7::8].translate(_TAG_ANON if vma.shmem else _TAG_FILE)
    # -errno's low byte is 0xFF - errno + 1: at least 0x7B for every errno there is (< 133), so
    # no error reads as a node 0..63
    nodes = bytes(status[0::4]).translate(_NODE_BYTE)
    pairs = bytearray(2 * len(tags))
    pairs[0::2], pairs[1::2] = nodes, tags
    for region, i, j in region_spans(vma, len(tags), page_size, region_shift):
        if tags.count(0xA0, i, j) != j - i:
            chunk = bytes(pairs[2 * i:2 * j])
            for n in set(nodes[i:j]):
                for tag, lru in ((0xA1, "anon"), (0xA2, "file")):
                    c = chunk.count(bytes((n, tag)))
                    if c:
                        key = (region, -1 if n == _UNKNOWN else n, lru)
                        out[key] = out.get(key, 0) + c
    return out


def residency_per_page(vma: Vma, data: bytes, nodes, page_size: int, region_shift: int) -> dict:
    """residency_by_status() one page at a time, for any node number (`nodes`: an int per page)."""
    out: dict = {}
    shift = region_shift - (page_size.bit_length() - 1)
    first = vma.start // page_size
    for i, top in enumerate(data[7::8]):
        if top & 0x80:
            lru = "file" if top & 0x20 and not vma.shmem else "anon"
            key = ((first + i) >> shift, nodes[i] if nodes[i] >= 0 else -1, lru)
            out[key] = out.get(key, 0) + 1
    return out
