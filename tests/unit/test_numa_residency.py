"""BPF residency per NUMA node without CAP_SYS_ADMIN (issue 18 item 12).

pagemap shows page frame numbers only to CAP_SYS_ADMIN, which deploy/mglrud.service drops:
under the unit every PFN reads 0, and before this every resident cell of a multi-node host
landed on node -1. The node of each page now comes from move_pages(2) with nodes=NULL.

Inputs: the workload's captured pagemap (tests/fixtures/bpf/pagemap.json) with its PFN bits
cleared, as the kernel shows it without the capability, and the captured zoneinfo with its
DMA32 zone relabelled node 1 (no two-node capture exists): two nodes, as node_of_pfn() reads them.
"""
import base64
import ctypes
import errno
import json
import mmap
import os
import struct

import pytest

from mglrud.config import loads
from mglrud.model import hotness as H
from mglrud.sources import bpf_heat, bpf_hotness
from tests.bpf_replay import BPF, DUMPS, META, ReplayProgram, fixture_proc

PAGE = 4096
SHIFT = 21
PM = json.loads((BPF / "pagemap.json").read_text())
ENTRIES = memoryview(base64.b64decode(PM["entries_b64"])).cast("Q").tolist()
HIDDEN = [e & ~H.PM_PFN_MASK for e in ENTRIES]  # what pagemap shows without CAP_SYS_ADMIN
ENOENT, EFAULT = -errno.ENOENT, -errno.EFAULT


def _status(values) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


def _two_nodes(tmp_path):
    fs = fixture_proc(tmp_path)
    zi = (BPF / "zoneinfo").read_text().replace("Node 0, zone    DMA32", "Node 1, zone    DMA32")
    (tmp_path / "proc" / "zoneinfo").write_text(zi)
    with open(tmp_path / "proc" / str(META["pid"]) / "pagemap", "wb") as f:  # sparse: only the mapping
        f.seek(PM["address"] // PAGE * 8)
        f.write(struct.pack(f"<{len(HIDDEN)}Q", *HIDDEN))
    return fs


def _half_and_half(pid, start, n, page_size):
    """Stands in for the kernel: the mapping's first half on node 0, the rest on node 1."""
    assert pid == META["pid"]
    mid = PM["address"] + PM["pages"] * PAGE // 2
    out = []
    for i in range(n):
        a = start + i * page_size
        inside = PM["address"] <= a < PM["address"] + PM["pages"] * PAGE
        present = inside and HIDDEN[(a - PM["address"]) // PAGE] & H.PM_PRESENT
        out.append((0 if a < mid else 1) if present else ENOENT)
    return _status(out)


def test_every_resident_cell_has_its_node_without_page_frame_numbers(tmp_path):
    fs = _two_nodes(tmp_path)
    assert bpf_heat.node_of_pfn(fs)[1] is None  # two nodes: the per-node way, not the one-node one
    cfg = loads("targets: [{name: w, pid: %d}]" % META["pid"])
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fs, loader=ReplayProgram)
    src.status_of = _half_and_half
    src.start()
    data = src.cycle(cfg.targets, {})
    [t] = data.targets
    resident = {}
    for r in t.regions:
        if r.resident_pages:
            resident[r.node] = resident.get(r.node, 0) + r.resident_pages
    # before: {-1: 16384} -- every page on node -1
    assert resident == {0: PM["pages"] // 2, 1: PM["pages"] // 2}


def test_where_move_pages_is_refused_the_page_frames_are_used(tmp_path):
    fs = _two_nodes(tmp_path)

    def refused(pid, start, n, page_size):
        raise OSError(errno.EPERM, "Operation not permitted")

    nodes = bpf_heat.node_of_pfn(fs)
    spans, cells, why = bpf_heat.read_residency(fs, META["pid"], SHIFT, PAGE, nodes, refused)
    assert why == "" and sum(cells.values()) == PM["pages"]
    assert {node for _, node, _ in cells} == {-1}  # hidden PFNs: honest "unknown", not a guess


def test_a_process_gone_during_move_pages_is_gone(tmp_path):
    fs = _two_nodes(tmp_path)

    def gone(pid, start, n, page_size):
        raise OSError(errno.ESRCH, "No such process")

    assert bpf_heat.read_residency(fs, META["pid"], SHIFT, PAGE, bpf_heat.node_of_pfn(fs), gone) is None


@pytest.mark.parametrize("shmem", [False, True])
def test_counting_by_status_agrees_with_the_per_page_count(shmem):
    entries = list(HIDDEN)
    entries[5] = 0
    entries[700] |= H.PM_FILE
    data = struct.pack(f"<{len(entries)}Q", *entries)
    # nodes 0, 1 and 3 in stripes that cross region boundaries; errors where absent, and
    # one present page whose status is an error (freed between the two reads): node -1
    nodes = [ENOENT if not e & H.PM_PRESENT else (i // 300) % 2 * (1 + 2 * (i % 7 == 0)) for i, e in
             enumerate(entries)]
    nodes[1000] = EFAULT
    start = PM["address"] + 3 * PAGE  # not region-aligned
    vma = H.Vma(start, start + len(entries) * PAGE, "", shmem)
    fast = H.residency_by_status(vma, data, _status(nodes), PAGE, SHIFT)
    assert fast == H.residency_per_page(vma, data, nodes, PAGE, SHIFT)
    assert sum(fast.values()) == sum(1 for e in entries if e & H.PM_PRESENT)
    assert {n for _, n, _ in fast} == {-1, 0, 1, 3}


def test_move_pages_is_asked_in_chunks_and_not_about_absent_ones(monkeypatch):
    monkeypatch.setattr(bpf_heat, "CHUNK_PAGES", 1000)
    entries = [0] * 5000
    entries[10] = entries[4321] = H.PM_PRESENT
    data = struct.pack(f"<{len(entries)}Q", *entries)
    asked = []

    def status_of(pid, start, n, page_size):
        asked.append((start, n))
        return _status([0] * n)

    vma = H.Vma(1 << 30, (1 << 30) + len(entries) * PAGE, "", False)
    cells = bpf_heat.residency_move_pages(7, vma, data, PAGE, SHIFT, status_of)
    assert asked == [(1 << 30, 1000), ((1 << 30) + 4000 * PAGE, 1000)]
    assert sum(cells.values()) == 2


def test_move_pages_on_our_own_pages_answers_with_their_node():
    """The real syscall, on this process's own memory (no capability needed for that)."""
    online = open("/sys/devices/system/node/online").read().strip()
    npages = 64
    buf = mmap.mmap(-1, npages * PAGE)
    try:
        for i in range(10):
            buf[i * PAGE] = 1
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        status = memoryview(bpf_heat.move_pages_status(os.getpid(), addr, npages, PAGE)).cast("i").tolist()
    finally:
        buf.close()
    nodes = set(status[:10])
    assert len(nodes) >= 1 and all(n >= 0 for n in nodes), status[:10]
    if online == "0":
        assert nodes == {0}
    assert status[10:] == [ENOENT] * (npages - 10)


@pytest.mark.parametrize("status_of", ["move_pages", None])
def test_reading_pagemap_in_pieces_counts_the_same_cells(tmp_path, monkeypatch, status_of):
    # read_residency() reads READ_BYTES of address space at a time (a 64 GiB mapping: 1024 reads of
    # 128 KiB, not one of 128 MiB); pieces that split regions must add up to the same cells
    fs = _two_nodes(tmp_path)
    nodes = bpf_heat.node_of_pfn(fs)
    of = _half_and_half if status_of else None
    whole = bpf_heat.read_residency(fs, META["pid"], SHIFT, PAGE, nodes, of)
    monkeypatch.setattr(bpf_heat, "READ_BYTES", 300 * PAGE)  # not a multiple of the 2 MiB region
    pieces = bpf_heat.read_residency(fs, META["pid"], SHIFT, PAGE, nodes, of)
    assert pieces == whole and sum(whole[1].values()) == PM["pages"]
    assert len({r for r, _, _ in whole[1]}) > 1  # several regions, split between pieces
