"""The MGLRU tracepoints of the kernel patch series (issues 4 and 17):
vmscan:mm_vmscan_lru_gen_young_range (one per scanned range, with the counts of
entries scanned and found young: the series' main patch) and
vmscan:mm_vmscan_lru_gen_young (one event per young entry: its debugging patch),
documented in Documentation/admin-guide/mm/multigen_lru.rst ("Tracing accessed
bits").

Each test starts tests/vm/tp_workload.py in a memcg of its own, maps memory at
fixed addresses, faults all of it in, ages the memcg once (which clears every
accessed bit), then touches a known set of pages and ages again with the
tracepoints on. The events of that second aging must name exactly the touched
pages: their addresses, their pfns (from /proc/PID/pagemap), the memcg, the
node, anon vs file, the generation numbers, and for a THP one PMD event with
nr_pages = 512; the range events must count the same pages young out of the
mapping's pages scanned.

Events are read from a tracefs instance of our own (so nothing else that
traces is disturbed), and through bcc programs, the way mglrud's BPF source
consumes them. The last test compares the stock-kernel probe of issue 14
(docs/stock-kernel.md) with the per-entry event, page by page, both attached at once.
"""

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import lrugen
from conftest import numa_nodes
from mglrud.config import Bpf, Paths
from mglrud.fs import FS
from mglrud.model import hotness as H
from mglrud.sources.bpf_program import Program

PAGE = os.sysconf("SC_PAGE_SIZE")
HPAGE_PMD_NR = 512
MAX_NR_GENS = 4
HERE = Path(__file__).parent
TRACING = Path("/sys/kernel/tracing")
EVENT = "vmscan/mm_vmscan_lru_gen_young"
RANGE_EVENT = "vmscan/mm_vmscan_lru_gen_young_range"

# Fixed addresses, far from where the loader and malloc put things. The trace
# filter keeps only events inside [LO, HI).
LO, HI = 0x3000_0000_0000, 0x3001_0000_0000
ANON_A = 0x3000_0000_0000
ANON_B = 0x3000_1000_0000
FILE_C = 0x3000_2000_0000
THP_D = 0x3000_4000_0000  # 2 MiB aligned
NODE1_E = 0x3000_6000_0000
NPAGES = 64

# A file that nothing in the guest maps or reads, so that its page cache is
# charged to the workload's memcg once the workload faults it in. The guest's
# root is the host's, read-only (9p); what is writable there (/tmp included)
# is tmpfs or an overlay onto tmpfs, whose pages are swap-backed and aged as
# anon, so a file written there cannot stand in for a file.
FILE_PATH = Path("/usr/lib/python3.11/pydoc_data/topics.py")


class Helper:
    """A tests/vm/tp_workload.py process in a memcg, driven line by line. Its
    memory comes from node 0 (unless a mapping says node=N), so that a test
    knows which node to age even in a two-node guest, and it runs on CPU 0,
    so that its "drain" command works."""

    def __init__(self, cgroup: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "tp_workload.py"), "--cgroup", str(cgroup),
             "--node", "0", "--cpu", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def __call__(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"tp_workload: {command!r} -> {answer or 'no answer (exited?)'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def helpers():
    started: list[Helper] = []

    def start(cgroup: Path) -> Helper:
        h = Helper(cgroup)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


FIELD = re.compile(r"(\w+)=(\S+)")
HEX_FIELDS = {"addr", "pfn"}
STR_FIELDS = {"mm", "type", "path"}


def parse_event(text: str) -> dict:
    """The fields of one event's text ("mm=... memcg_id=7 nid=0 addr=0x... ...")."""
    ev = {}
    for key, value in FIELD.findall(text):
        if key in STR_FIELDS:
            ev[key] = value
        else:
            ev[key] = int(value, 16 if key in HEX_FIELDS else 10)
    return ev


class Trace:
    """A tracefs instance with only our two events enabled, filtered to
    [LO, HI). stop() returns the per-entry events and keeps the range events
    in .ranges."""

    def __init__(self, name: str = "mglrud_tp_test"):
        for event in (EVENT, RANGE_EVENT):
            if not (TRACING / "events" / event).is_dir():
                pytest.fail(f"{TRACING}/events/{event} does not exist: this kernel lacks the "
                            "kernel-patch/ series (or tracefs is not mounted)")
        self.dir = TRACING / "instances" / name
        if self.dir.exists():
            self.dir.rmdir()
        self.dir.mkdir()
        (self.dir / "buffer_size_kb").write_text("4096")
        self.events = [self.dir / "events" / e for e in (EVENT, RANGE_EVENT)]
        for event in self.events:
            (event / "filter").write_text(f"addr >= {LO:#x} && addr < {HI:#x}")
        self.ranges: list[dict] = []

    def start(self) -> None:
        (self.dir / "trace").write_text("")
        for event in self.events:
            (event / "enable").write_text("1")

    def stop(self) -> list[dict]:
        for event in self.events:
            (event / "enable").write_text("0")
        text = (self.dir / "trace").read_text()
        m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
        assert m and m[1] == m[2], f"trace buffer overran: {m and m[0]}"
        entries, self.ranges = [], []
        for line in text.splitlines():
            _, sep, rest = line.partition(" mm_vmscan_lru_gen_young: ")
            if sep:
                entries.append(parse_event(rest))
            _, sep, rest = line.partition(" mm_vmscan_lru_gen_young_range: ")
            if sep:
                self.ranges.append(parse_event(rest))
        return entries

    def close(self) -> None:
        for event in self.events:
            (event / "enable").write_text("0")
        self.dir.rmdir()


@pytest.fixture
def trace():
    t = Trace()
    yield t
    t.close()


def pagemap_pfns(pid: int, addrs) -> dict[int, int]:
    """{addr: pfn} for the pages at addrs that are present (root sees pfns)."""
    out = {}
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for addr in addrs:
            f.seek(addr // PAGE * 8)
            entry = int.from_bytes(f.read(8), "little")
            if entry >> 63:
                out[addr] = entry & ((1 << 55) - 1)
    return out


def max_seq(mid: int, node: int) -> int:
    return lrugen.read()[(mid, node)]["gens"][-1][0]


def age(mid: int, node: int = 0) -> int:
    """Age memcg mid on node (force_scan, can_swap: every PTE of its mms is
    visited, anon included without swap); return the max_seq it aged from."""
    seq = max_seq(mid, node)
    lrugen.age(mid, node, can_swap=1, force_scan=1)
    assert max_seq(mid, node) == seq + 1, "the aging did not create a new generation"
    return seq


def pages(base: int, indices) -> set[int]:
    return {base + i * PAGE for i in indices}


def events_at(events: list[dict], base: int, npages: int) -> list[dict]:
    return [e for e in events if base <= e["addr"] < base + npages * PAGE]


def check_pte_events(events, helper, base, touched, *, memcg_id, seq, type_, nid=0):
    """The events in [base, base+NPAGES) are one per touched page, and right."""
    mine = events_at(events, base, NPAGES)
    want = pages(base, touched)
    counts = Counter(e["addr"] for e in mine)
    assert set(counts) == want, (
        f"events at {base:#x}: missing pages {sorted((a - base) // PAGE for a in want - set(counts))}, "
        f"unexpected pages {sorted((a - base) // PAGE for a in set(counts) - want)}")
    assert all(n == 1 for n in counts.values()), f"pages reported more than once: {counts}"
    # the events carry the mm, not a pid: one mm for all of a process's events
    assert len({e["mm"] for e in mine}) == 1, f"several mms in one process's events: {mine}"
    pfns = pagemap_pfns(helper.pid, want)
    for e in mine:
        assert e["pfn"] == pfns[e["addr"]], f"pfn of {e['addr']:#x}: event {e['pfn']:#x}, pagemap {pfns[e['addr']]:#x}"
        assert e["memcg_id"] == memcg_id, e
        assert e["nid"] == nid, e
        assert e["type"] == type_, e
        assert e["path"] == "pte" and e["nr_pages"] == 1, e
        assert e["max_seq"] == seq and e["new_gen"] == seq % MAX_NR_GENS, e
        # Faulted in and drained onto the LRU before the first aging, which
        # left it in the generation that was youngest then.
        assert e["old_gen"] == (seq - 1) % MAX_NR_GENS, e


TABLE = HPAGE_PMD_NR * PAGE  # the address space one PTE table maps (x86-64)


def check_range_events(ranges, base, touched, *, memcg_id, seq, type_, nid=0, path="pte"):
    """The range events of this aging (memcg, node) in the PTE table of [base, base+NPAGES)
    count exactly the touched pages young. Each mapping here is alone in its 2 MiB, so
    the page table walk's one event for the table scanned exactly its NPAGES entries."""
    table = base - base % TABLE
    mine = [r for r in ranges if table <= r["addr"] < table + TABLE
            and (r["memcg_id"], r["nid"]) == (memcg_id, nid)]
    assert mine, f"no range event of memcg {memcg_id} node {nid} in the table at {table:#x}: {ranges}"
    for r in mine:
        assert r["path"] == path, r
        assert r["max_seq"] == seq and r["nr_pages"] == 1, r
        assert r["nr_file"] == (r["nr_young"] if type_ == "file" else 0), r
        assert 0 <= r["nr_young"] <= r["nr_scanned"], r
    assert len({r["mm"] for r in mine}) == 1, f"several mms in one process's range events: {mine}"
    if path == "pte":
        assert len(mine) == 1, f"expected one event for the PTE table at {table:#x}: {mine}"
        r = mine[0]
        assert r["addr"] == table, r
        assert (r["nr_scanned"], r["nr_young"]) == (NPAGES, len(touched)), \
            f"table at {table:#x}: {r['nr_young']} young of {r['nr_scanned']} scanned, touched {len(touched)} of {NPAGES}"
    else:
        # look-around: the PTE reclaim asked about alone (1 of 1), then its window, where it is
        # no longer young; every touched page is found young once, by one or the other
        assert sum(r["nr_young"] for r in mine) == len(touched), mine
        assert all(base <= r["addr"] and r["addr"] + r["nr_scanned"] * PAGE <= base + NPAGES * PAGE
                   for r in mine), f"a look-around range outside the mapping: {mine}"


def fault_in_and_clear(helper, mid, node, names):
    """Fault in every page of the named mappings, get them onto the LRU, then
    age so that none is young."""
    for name in names:
        helper(f"touch {name} all")
    helper("drain")
    age(mid, node)


def test_pte_events_name_exactly_the_touched_pages_of_two_memcgs(memcgs, helpers, trace):
    cg_a, cg_b = memcgs("tp-a"), memcgs("tp-b")
    a, b = helpers(cg_a), helpers(cg_b)
    a(f"map A {ANON_A:#x} {NPAGES} anon")
    b(f"map B {ANON_B:#x} {NPAGES} anon")
    mid_a = lrugen.memcg_id("/mglrud-test/tp-a")
    mid_b = lrugen.memcg_id("/mglrud-test/tp-b")
    assert mid_a != mid_b
    fault_in_and_clear(a, mid_a, 0, ["A"])
    fault_in_and_clear(b, mid_b, 0, ["B"])

    touched_a = [0, 1, 5, 17, 40, 63]
    touched_b = [2, 3, 4, 30, 31, 62]
    a(f"touch A {','.join(map(str, touched_a))}")
    b(f"touch B {','.join(map(str, touched_b))}")
    trace.start()
    seq_a = age(mid_a)
    seq_b = age(mid_b)
    events = trace.stop()

    check_pte_events(events, a, ANON_A, touched_a, memcg_id=mid_a, seq=seq_a, type_="anon")
    check_pte_events(events, b, ANON_B, touched_b, memcg_id=mid_b, seq=seq_b, type_="anon")
    assert len(events) == len(touched_a) + len(touched_b), "events outside the two mappings"
    check_range_events(trace.ranges, ANON_A, touched_a, memcg_id=mid_a, seq=seq_a, type_="anon")
    check_range_events(trace.ranges, ANON_B, touched_b, memcg_id=mid_b, seq=seq_b, type_="anon")
    assert len(trace.ranges) == 2, f"expected one range event per PTE table, got {trace.ranges}"


def test_file_pages_are_reported_as_file(memcgs, helpers, trace):
    assert FILE_PATH.stat().st_size >= NPAGES * PAGE, f"{FILE_PATH} is too small"
    cg = memcgs("tp-file")
    h = helpers(cg)
    h(f"map A {ANON_A:#x} {NPAGES} anon")
    h(f"map C {FILE_C:#x} {NPAGES} file {FILE_PATH}")
    mid = lrugen.memcg_id("/mglrud-test/tp-file")
    fault_in_and_clear(h, mid, 0, ["A", "C"])

    touched_anon, touched_file = [7, 8, 9], [0, 10, 11, 12, 50, 63]
    h(f"touch A {','.join(map(str, touched_anon))}")
    h(f"touch C {','.join(map(str, touched_file))}")
    trace.start()
    seq = age(mid)
    events = trace.stop()

    check_pte_events(events, h, ANON_A, touched_anon, memcg_id=mid, seq=seq, type_="anon")
    check_pte_events(events, h, FILE_C, touched_file, memcg_id=mid, seq=seq, type_="file")
    check_range_events(trace.ranges, ANON_A, touched_anon, memcg_id=mid, seq=seq, type_="anon")
    check_range_events(trace.ranges, FILE_C, touched_file, memcg_id=mid, seq=seq, type_="file")


def thp_mapped(pid: int, addr: int) -> bool:
    """Whether addr is mapped by a PMD: smaps of the VMA at addr shows AnonHugePages."""
    text = Path(f"/proc/{pid}/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        start, _, end = block.split(" ", 1)[0].partition("-")
        if int(start, 16) <= addr < int(end, 16):
            m = re.search(r"AnonHugePages:\s+(\d+) kB", block)
            return bool(m) and int(m[1]) >= 2048
    return False


def test_thp_reports_one_pmd_event_with_512_pages(memcgs, helpers, trace):
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert "[never]" not in thp, f"THP is disabled in the guest: {thp}"
    cg = memcgs("tp-thp")
    h = helpers(cg)
    h(f"map D {THP_D:#x} {HPAGE_PMD_NR} anon thp")
    mid = lrugen.memcg_id("/mglrud-test/tp-thp")
    h("touch D 0")
    assert thp_mapped(h.pid, THP_D), "the madvised 2 MiB region did not get a PMD-mapped THP"
    age(mid)

    h("touch D 3,300")  # two pages of the same huge page: still one PMD entry
    trace.start()
    seq = age(mid)
    events = trace.stop()

    mine = events_at(events, THP_D, HPAGE_PMD_NR)
    assert len(mine) == 1, f"expected one event for the THP, got {mine}"
    e = mine[0]
    assert e["path"] == "pmd" and e["nr_pages"] == HPAGE_PMD_NR, e
    assert e["addr"] == THP_D, e
    assert e["pfn"] == pagemap_pfns(h.pid, [THP_D])[THP_D], e
    assert e["pfn"] % HPAGE_PMD_NR == 0, e
    assert e["memcg_id"] == mid and e["type"] == "anon", e
    assert e["max_seq"] == seq and e["new_gen"] == seq % MAX_NR_GENS, e

    ranges = [r for r in trace.ranges if r["addr"] == THP_D]
    assert len(ranges) == 1, f"expected one range event for the THP, got {trace.ranges}"
    r = ranges[0]
    assert (r["path"], r["nr_pages"], r["nr_scanned"], r["nr_young"], r["nr_file"]) == \
        ("pmd", HPAGE_PMD_NR, 1, 1, 0), r
    assert (r["mm"], r["memcg_id"], r["max_seq"]) == (e["mm"], mid, seq), r

    # a THP looked at and not accessed is reported too: scanned, not young
    trace.start()
    seq = age(mid)
    trace.stop()
    ranges = [r for r in trace.ranges if r["addr"] == THP_D]
    assert [(r["path"], r["nr_scanned"], r["nr_young"], r["max_seq"]) for r in ranges] == \
        [("pmd", 1, 0, seq)], f"expected one cold pmd range for the untouched THP, got {trace.ranges}"


@pytest.mark.numa
def test_memory_bound_to_node_1_reports_node_1(memcgs, helpers, trace):
    if len(numa_nodes()) < 2:
        pytest.skip("needs a guest with two NUMA nodes: kernel-patch/vm-run.sh --numa")
    cg = memcgs("tp-numa")
    h = helpers(cg)
    h(f"map A {ANON_A:#x} {NPAGES} anon")
    h(f"map E {NODE1_E:#x} {NPAGES} anon node=1")
    mid = lrugen.memcg_id("/mglrud-test/tp-numa")
    h("touch A all")
    h("touch E all")
    h("drain")
    age(mid, 0)
    age(mid, 1)

    touched_0, touched_1 = [1, 2, 3], [0, 33, 34, 63]
    h(f"touch A {','.join(map(str, touched_0))}")
    h(f"touch E {','.join(map(str, touched_1))}")
    trace.start()
    seq0 = age(mid, 0)
    seq1 = age(mid, 1)
    events = trace.stop()

    # Each aging walks the same page tables but only promotes its own node's folios.
    check_pte_events(events, h, ANON_A, touched_0, memcg_id=mid, seq=seq0, type_="anon", nid=0)
    check_pte_events(events, h, NODE1_E, touched_1, memcg_id=mid, seq=seq1, type_="anon", nid=1)
    check_range_events(trace.ranges, ANON_A, touched_0, memcg_id=mid, seq=seq0, type_="anon", nid=0)
    check_range_events(trace.ranges, NODE1_E, touched_1, memcg_id=mid, seq=seq1, type_="anon", nid=1)


def test_reclaim_look_around_reports_the_touched_pages(memcgs, helpers, trace):
    """The rmap path: evicting a generation of file pages makes reclaim test
    each mapped folio (folio_referenced() -> lru_gen_look_around()); the young
    ones are reported with path look_around, the rest are reclaimed. File
    pages, because the guest has no swap."""
    cg = memcgs("tp-rmap")
    h = helpers(cg)
    h(f"map C {FILE_C:#x} {NPAGES} file {FILE_PATH}")
    mid = lrugen.memcg_id("/mglrud-test/tp-rmap")
    fault_in_and_clear(h, mid, 0, ["C"])
    old = age(mid)  # now two generations younger than the pages' own, old - 1

    touched = [1, 2, 20, 21, 45]
    h(f"touch C {','.join(map(str, touched))}")
    trace.start()
    seq = max_seq(mid, 0)
    with open(lrugen.LRU_GEN, "w") as f:
        f.write(f"- {mid} 0 {old - 1} 0 {NPAGES * 4}")  # file only (swappiness 0)
    events = trace.stop()

    mine = events_at(events, FILE_C, NPAGES)
    counts = Counter(e["addr"] for e in mine)
    assert set(counts) == pages(FILE_C, touched), (
        f"look-around reported pages {sorted((a - FILE_C) // PAGE for a in counts)}, touched {touched}")
    assert all(n == 1 for n in counts.values()), f"pages reported more than once: {counts}"
    pfns = pagemap_pfns(h.pid, counts)
    assert set(pfns) == set(counts), "a touched page was reclaimed"
    for e in mine:
        assert e["path"] == "look_around" and e["nr_pages"] == 1, e
        assert e["pfn"] == pfns[e["addr"]], e
        assert (e["memcg_id"], e["nid"], e["type"]) == (mid, 0, "file"), e
        assert e["max_seq"] == seq and e["new_gen"] == seq % MAX_NR_GENS, e
        # -1 for the folio reclaim asked about (isolated) and for neighbours
        # isolated in the same batch; the generation being evicted otherwise.
        assert e["old_gen"] in (-1, (old - 1) % MAX_NR_GENS), e
    assert any(e["old_gen"] == -1 for e in mine), "no event for the PTE reclaim asked about"
    resident = pagemap_pfns(h.pid, pages(FILE_C, range(NPAGES)))
    assert set(resident) == pages(FILE_C, touched), "reclaim kept untouched pages or dropped touched ones"
    check_range_events(trace.ranges, FILE_C, touched, memcg_id=mid, seq=seq, type_="file",
                       path="look_around")
    assert any((r["nr_scanned"], r["nr_young"]) == (1, 1) for r in trace.ranges), \
        "no one-entry range for the PTE reclaim asked about"


# The events carry the mm; the program reads mm->owner->tgid at the offsets of the kernel's
# BTF, as mglrud's own program does (bpf/hotness.bpf.c owner_tgid(), MM_OWNER/TASK_TGID).
BCC_PROGRAM = r"""
struct seen {
    u64 pfn;
    u64 max_seq;
    u32 tgid;
    u32 nr_pages;
    s32 nid;
    s32 old_gen;
    s32 new_gen;
    u16 memcg_id;
    u8 type;
    u8 path;
};

BPF_HASH(seen, u64, struct seen, 4096);
BPF_HASH(count, u64, u64, 4096);

TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young)
{
    u64 addr = args->addr;
    struct seen s = {};

    if (addr < LO || addr >= HI)
        return 0;
    s.pfn = args->pfn;
    s.max_seq = args->max_seq;
    {
        void *owner = NULL;

        bpf_probe_read_kernel(&owner, sizeof(owner), (char *)args->mm + MM_OWNER);
        if (owner)
            bpf_probe_read_kernel(&s.tgid, sizeof(s.tgid), (char *)owner + TASK_TGID);
    }
    s.nr_pages = args->nr_pages;
    s.nid = args->nid;
    s.old_gen = args->old_gen;
    s.new_gen = args->new_gen;
    s.memcg_id = args->memcg_id;
    s.type = args->type;
    s.path = args->path;
    seen.update(&addr, &s);
    count.increment(addr);
    return 0;
}
"""


def bcc_cflags() -> list[str]:
    """The address filter and the offsets of mm_struct.owner and task_struct.tgid, from BTF."""
    from mglrud import btf

    data = Path("/sys/kernel/btf/vmlinux").read_bytes()
    return [f"-DLO={LO:#x}ULL", f"-DHI={HI:#x}ULL",
            f"-DMM_OWNER={btf.member_offset(data, 'mm_struct', 'owner')}",
            f"-DTASK_TGID={btf.member_offset(data, 'task_struct', 'tgid')}"]


def test_a_bcc_program_sees_the_same_fields(memcgs, helpers):
    """What mglrud's BPF source does: attach with bcc and read the raw fields."""
    from bcc import BPF  # Debian's python3-bpfcc, seen through the venv's system site-packages

    cg = memcgs("tp-bcc")
    h = helpers(cg)
    h(f"map A {ANON_A:#x} {NPAGES} anon")
    mid = lrugen.memcg_id("/mglrud-test/tp-bcc")
    fault_in_and_clear(h, mid, 0, ["A"])

    b = BPF(text=BCC_PROGRAM.encode(), cflags=bcc_cflags())
    try:
        touched = [0, 21, 22, 23, 42]
        h(f"touch A {','.join(map(str, touched))}")
        seq = age(mid)
        time.sleep(0.1)
        seen = {k.value: v for k, v in b[b"seen"].items()}
        count = {k.value: v.value for k, v in b[b"count"].items()}
    finally:
        b.cleanup()

    want = pages(ANON_A, touched)
    assert set(seen) == want, f"bcc saw pages {sorted((a - ANON_A) // PAGE for a in seen)}"
    assert all(n == 1 for n in count.values()), count
    pfns = pagemap_pfns(h.pid, want)
    for addr, s in seen.items():
        assert s.pfn == pfns[addr]
        assert (s.tgid, s.memcg_id, s.nid, s.nr_pages, s.type, s.path) == (h.pid, mid, 0, 1, 0, 0)
        assert s.max_seq == seq and s.new_gen == seq % MAX_NR_GENS
        assert s.old_gen == (seq - 1) % MAX_NR_GENS


def aging_histogram(memcgs, helpers, name: str) -> list[int]:
    """A fixed sequence of touches and agings in a fresh memcg; the anon pages
    per generation afterwards, youngest first."""
    h = helpers(memcgs(name))
    h(f"map A {ANON_A:#x} {4 * NPAGES} anon")
    mid = lrugen.memcg_id(f"/mglrud-test/{name}")
    h("touch A all")
    h("drain")
    age(mid)
    for touched in (range(0, 4 * NPAGES, 2), range(0, 4 * NPAGES, 4), range(0, 4 * NPAGES, 8)):
        h(f"touch A {','.join(map(str, touched))}")
        age(mid)
    gens = lrugen.read()[(mid, 0)]["gens"]
    h.stop()
    return [anon for (_seq, _age, anon, _file) in reversed(gens)]


def test_aging_is_the_same_with_a_program_attached(memcgs, helpers, trace):
    """The same workload and agings, once with the tracepoints off and once
    with a bcc program on the per-entry one and both enabled in tracefs, end
    with the same generation histogram."""
    from bcc import BPF

    off = aging_histogram(memcgs, helpers, "tp-same-off")
    b = BPF(text=BCC_PROGRAM.encode(), cflags=bcc_cflags())
    trace.start()
    try:
        on = aging_histogram(memcgs, helpers, "tp-same-on")
        seen = len(b[b"seen"])
    finally:
        trace.stop()
        b.cleanup()
    assert seen == 4 * NPAGES, f"the program saw {seen} pages, expected all {4 * NPAGES}"
    assert sum(r["nr_young"] for r in trace.ranges) >= 4 * NPAGES, "the range event did not fire"
    print("anon pages per generation, youngest first: off", off, "on", on)
    # The mapping's pages spread over the generations the same way each time;
    # the rest is the workload's own Python heap, which may differ a little.
    assert len(on) == len(off)
    for gen, (a, b_) in enumerate(zip(off, on)):
        assert abs(a - b_) <= 8, f"generation {gen} (0 = youngest): {a} pages off, {b_} on"


# The stock-kernel probe and the patch's tracepoint count the same pages (issue 14). On the patched
# kernel both are available, so they can be attached at once and compared page by page: mglrud's
# own program on the accessed-bit probe (fexit on ptep_test_and_clear_young() and
# pmdp_test_and_clear_young(); docs/stock-kernel.md), built with 4 KiB regions so that each map
# cell is one page, and the per-entry tracepoint read from the tracefs instance.
def probe_pages(prog: Program, tgid: int) -> dict[int, tuple[int, str]]:
    """{address: (pages, lru)} of the probe's cells of tgid inside [LO, HI): with 4 KiB
    regions a cell is one page (a THP: the cell of its first page, 512 pages)."""
    out = {}
    for c in prog.dump()["heat"]:
        addr = c["region"] * PAGE
        if c["tgid"] == tgid and LO <= addr < HI:
            assert addr not in out, f"two cells at {addr:#x}: {c}"
            out[addr] = (c["percpu"][0][0], H.LRU_NAMES[c["lru"]])
    return out


def test_the_probe_and_the_tracepoint_count_the_same_pages(memcgs, helpers, trace):
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert "[never]" not in thp, f"THP is disabled in the guest: {thp}"
    assert FILE_PATH.stat().st_size >= NPAGES * PAGE, f"{FILE_PATH} is too small"
    cg = memcgs("tp-probe")
    h = helpers(cg)
    h(f"map A {ANON_A:#x} {NPAGES} anon")
    h(f"map C {FILE_C:#x} {NPAGES} file {FILE_PATH}")
    h(f"map D {THP_D:#x} {HPAGE_PMD_NR} anon thp")
    mid = lrugen.memcg_id("/mglrud-test/tp-probe")
    h("touch D 0")
    assert thp_mapped(h.pid, THP_D), "the madvised 2 MiB region did not get a PMD-mapped THP"
    fault_in_and_clear(h, mid, 0, ["A", "C"])

    # the daemon's own loader and program, on the probe although the tracepoint is there
    prog = Program(Bpf(region_size=PAGE, max_regions=1 << 16), FS(Paths()), event="fexit")
    try:
        assert prog.event == "fexit", f"attached as {prog.event}: {getattr(prog, 'fallback', '')}"
        prog.set_targets({h.pid}, set())
        before = probe_pages(prog, h.pid)  # what the first aging's harvest left: cleared below
        prog.delete([k for k in H.raw_from_dump(prog.dump()).cells])
        touched_anon, touched_file = [0, 1, 5, 17, 40, 63], [2, 3, 30, 62]
        h(f"touch A {','.join(map(str, touched_anon))}")
        h(f"touch C {','.join(map(str, touched_file))}")
        h("touch D 3,300")  # two pages of one huge page: one PMD entry, 512 pages
        trace.start()
        age(mid)
        events = trace.stop()
        found = probe_pages(prog, h.pid)
        harvest = prog.dump()["harvest"]
    finally:
        prog.close()

    want = {a: (1, "anon") for a in pages(ANON_A, touched_anon)}
    want |= {a: (1, "file") for a in pages(FILE_C, touched_file)}
    want[THP_D] = (HPAGE_PMD_NR, "anon")
    traced = {}
    for e in events_at(events, ANON_A, NPAGES) + events_at(events, FILE_C, NPAGES) + \
            events_at(events, THP_D, HPAGE_PMD_NR):
        assert e["addr"] not in traced, f"the tracepoint named {e['addr']:#x} twice"
        traced[e["addr"]] = (e["nr_pages"], e["type"])
    assert traced == want, f"tracepoint: {sorted(traced.items())}\nwant: {sorted(want.items())}"
    assert found == traced, (
        f"probe and tracepoint differ: only the probe {sorted(set(found.items()) - set(traced.items()))}, "
        f"only the tracepoint {sorted(set(traced.items()) - set(found.items()))}"
        f" (left from the first aging, deleted: {len(before)} cells)")
    # every harvest of the target came from this process's lru_gen write: the aging's
    assert harvest["reclaim"] == [0] * len(harvest["reclaim"]) and sum(harvest["aging"]) > 0, harvest
