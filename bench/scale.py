"""Scale (issue 19): mglrud's cost from 10 to 3,000 memcgs and 65k BPF cells, before and after, in one run.

Everything is SYNTHETIC but goes through the real code in the kernel's formats:

- lru_gen: N memcgs (systemd services and kubepods paths) x 2 nodes x 4 generations, printed with
  lru_gen_seq_show()'s formats (tests/unit/synth.py), read by the real Engine (dry run: RecordingWriter);
- BPF: a Program whose maps (bpfsys.Map with batches() given) hold C cells x P CPUs of struct
  region_key / region_val bytes as BPF_MAP_LOOKUP_BATCH returns them, read by the real
  Program.dump(), raw_from_dump(), step() and the source's per-target assembly (residency excluded:
  the fixture's processes have no pagemap);
- residency: a real read of /proc/self/pagemap over this process's own 1 GiB mapping (all pages
  touched), decoded for one node and, with a zone table splitting the PFNs in two, for two nodes;
  and per cycle (residency_cycles_worker): a child holding 1 GiB read over 24 simulated cycles, quiet
  or changed between cycles, in full every cycle (before) or through ResidencyCache (after).

BEFORE is mglrud at --before (default: where this branch left main, `git merge-base HEAD main`),
extracted with `git archive` into a temporary directory; AFTER is this tree. Each measurement is one
fresh subprocess (/usr/bin/python3 bench/scale.py --worker ROOT ...) importing mglrud from ROOT, so
the two never share a process and RSS is each one's own. Runs are interleaved (before, after, before,
...) and the table shows medians. CPU figures are process CPU time (time.process_time): the machine
is shared, and CPU time is what a cycle costs.

  /usr/bin/python3 bench/scale.py [--runs 5] [--sizes 10,160,1000,3000] [--cells 65536]
  /usr/bin/python3 bench/scale.py --sizes '' --out bench/results/scale-bpf.txt   # BPF and residency only
  /usr/bin/python3 bench/scale.py --runs 5 --sizes '' --parts residency --out bench/results/scale-residency.txt

Writes the table to bench/results/scale.txt.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = "/usr/bin/python3"

CONFIG = """
aging: {interval: 1m, dry_run: true}
snapshot: {interval: 10s}
targets: [{name: services, memcg: "/system.slice/**"}, {name: pods, memcg: "/kubepods.slice/**"}]
"""


# ---------------------------------------------------------------- fixtures (run in the worker)

def lru_gen_rows(memcgs: int):
    rows = []
    for i in range(memcgs):
        path = f"/system.slice/service-{i:04d}.service" if i % 2 else f"/kubepods.slice/pod-{i:04d}/ctr"
        nodes = [(n, [(10 + g, 1000 * (4 - g) + i, 100 * g + i + n, 50 * g + i) for g in range(4)]) for n in (0, 1)]
        rows.append((i + 2, path, nodes))
    return rows


def paths_yaml(tmp: Path) -> str:
    return (f"paths: {{debugfs: '{tmp / 'debugfs'}', procfs: '{tmp / 'proc'}', "
            f"sysfs: '{tmp / 'sys'}', cgroupfs: '{tmp / 'cgroup'}'}}\n")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def cpu(f):
    t0 = time.process_time()
    r = f()
    return time.process_time() - t0, r


def rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def trims_at_publish() -> bool:
    """Whether this tree's daemon loop calls memory.trim() after publishing (before: no)."""
    import inspect
    from mglrud import daemon
    return "memory.trim()" in inspect.getsource(daemon.Daemon._run)


def memcg_worker(memcgs: int) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from synth import lru_gen_text
    from mglrud import exposition, snapshot_json
    from mglrud.collectors import Published
    from mglrud.config import loads
    from mglrud.cycle import Engine
    from mglrud.fs import RecordingWriter

    from mglrud import memory
    memory.tune()  # what the daemon does at start (Daemon.run)
    tmp = Path(tempfile.mkdtemp(prefix="mglrud-scale-"))
    (tmp / "debugfs").mkdir()
    (tmp / "debugfs" / "lru_gen").write_text(lru_gen_text(lru_gen_rows(memcgs)))
    clock = Clock()
    eng = Engine(loads(CONFIG + paths_yaml(tmp)), writer=RecordingWriter(), clock=clock,
                 wall=lambda: 1.7e9 + clock.t)
    out = {}
    eng.cycle(age=False)
    # The daemon's loop (daemon.py) over simulated time: wake at due_in() or at the next publish
    # (snapshot.interval 10 s), run a cycle; the simulated clock also moves by each cycle's CPU time.
    start, busy, wakeups, steady = clock.t, 0.0, 0, []
    publish = clock.t + 10
    while clock.t - start < 60 and (wakeups < 12 or clock.t - start < 10):
        clock.t = max(clock.t + 0.05, min(clock.t + eng.due_in(), publish))
        before = len(eng.writer.commands)
        dt, snap = cpu(eng.cycle)
        if trims_at_publish():  # the daemon gives the replaced snapshot's heap back at the publish
            dt += cpu(memory.trim)[0]
        clock.t += dt
        busy += dt
        wakeups += 1
        publish = clock.t + 10
        if len(eng.writer.commands) > before:
            steady.append((dt, len(eng.writer.commands) - before))
    out["loop_busy"] = busy / (clock.t - start)
    out["wakeups_per_min"] = wakeups / (clock.t - start) * 60
    out["loop_cycle"] = statistics.median(d for d, _ in steady) if steady else 0.0
    # one steady cycle: a sixth of the memcgs due (what one 10 s publish covers of a 1 min interval);
    # the median of 5 such cycles (another sixth each time), and of 3 age_all cycles: single cycles
    # moved by ±40 % on the shared machine
    steady_runs = []
    for r in range(5):
        clock.t += 1000
        for i, p in enumerate(list(eng.aging.next_due)):
            eng.aging.next_due[p] = clock.t + (0 if i % 6 == r else 1e6)
        eng.aging.last_aged = float("-inf") if hasattr(eng.aging, "last_aged") else None
        steady_runs.append(cpu(eng.cycle)[0])
    out["steady"] = statistics.median(steady_runs)
    age_all_runs = []
    for r in range(3):
        dt, snap = cpu(lambda: eng.cycle(age_all=True))
        age_all_runs.append(dt)
    out["age_all"] = statistics.median(age_all_runs)
    # scrapes: the first of a snapshot renders it, the next ones get the same bytes
    exp = exposition.Exposition(Published(snap), wall=lambda: snap.taken_at + 1)
    # (as http.py asks: the body in pieces where the tree has Exposition.body(), else one bytes)
    ask = getattr(exp, "body", exp.metrics)
    out["scrape_first"], (body, _) = cpu(ask)
    out["scrape_cached"], _ = cpu(ask)
    body = body if isinstance(body, bytes) else b"".join(body)
    out["series"] = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
    # /snapshot.json as the daemon serves it: in pieces where it does (after), else one string
    if hasattr(snapshot_json, "to_json_pieces"):
        out["json_bytes"] = sum(map(len, snapshot_json.to_json_pieces(snap)))
    else:
        out["json_bytes"] = len(snapshot_json.to_json(snap).encode())
    # what the daemon holds between scrapes: the engine, the snapshot and the render cache, not
    # the bodies of past responses (this process kept two, 2 x 21 MiB at 3,000 memcgs)
    del body, _, ask  # (ask: a bound method of exp, which holds its render cache)
    import gc
    gc.collect()
    out.update(rss())
    del exp  # its render cache: the simulated daemon below has its own
    # the daemon as a whole: its loop (daemon.py: a cycle at each due wake-up or publish, every
    # cycle published, then Exposition.prepare()) and one Prometheus scraping /metrics every S
    # seconds, over simulated time; the share of a core is all of it (cycles, renders ahead,
    # scrapes) in the minutes after the first two (when the scraper's interval is known).
    # After the RSS above, which it would move (by when its last render fell).
    for every in SCRAPE_EVERY:
        out[f"daemon_share_{every:.0f}"], out[f"renders_per_min_{every:.0f}"], out[f"rss_gzip_{every:.0f}"] = \
            daemon_share(eng, clock, exposition, Published, every)
    # a scraper without gzip (curl, an agent that does not ask for it): the text is what it reads
    out["daemon_share_15_plain"], _, out["rss_plain_15"] = daemon_share(eng, clock, exposition, Published, 15.0,
                                                                        gz=False)
    return out


SCRAPE_EVERY = (15.0, 60.0)  # Prometheus' scrape intervals simulated (a common one; its default)


def daemon_share(eng, clock, exposition, Published, every: float, minutes: int = 4,
                 gz: bool = True) -> tuple[float, float, int]:
    """(share of one core, renders a minute, RSS at the end) of the daemon's loop plus a scraper
    (gzip, as Prometheus asks, unless `gz` is False) every `every` s. A scrape is what
    http.py does: the body (in pieces where the tree has Exposition.body()), written (here:
    dropped), then Exposition.sent() where the tree has it."""
    import inspect
    from mglrud import memory
    trims = trims_at_publish()
    published = Published(None)
    exp = exposition.Exposition(published, wall=lambda: 1.7e9 + clock.t, clock=clock)
    ahead = "within" in inspect.signature(exp.prepare).parameters  # before: every snapshot asked for
    from mglrud import daemon  # the next publish: at the next cycle, an aging wake-up if sooner (later trees)
    wakeups = "self.engine.due_in()))" in inspect.getsource(daemon.Daemon._run)
    start = clock.t
    next_publish, next_scrape = start, start + 3.0
    # counted: from just after the first scrape 2 minutes in (the scraper's interval known) to
    # just after the first scrape `minutes` in: whole scrape intervals, so that a render made
    # ahead for a scrape beyond the window is not counted in it (nor one for the first scrape)
    busy, renders0, measured_from, end = 0.0, 0, None, None
    while end is None:
        counted = measured_from is not None
        if eng.due_in() <= 0 or clock.t >= next_publish:
            dt, snap = cpu(eng.cycle)
            published.publish(snap)
            dt2, _ = cpu(lambda: exp.prepare(within=min(10.0, max(0.0, eng.due_in())) if wakeups else 10.0)
                         if ahead else exp.prepare())
            if trims:
                dt2 += cpu(memory.trim)[0]
            clock.t += dt + dt2
            busy += (dt + dt2) if counted else 0.0
            next_publish = clock.t + 10.0
        if clock.t >= next_scrape:  # as Prometheus asks: gzip
            dt, _ = cpu(lambda: scrape(exp, "gzip" if gz else None))
            clock.t += dt
            busy += dt if counted else 0.0
            next_scrape += every
            if not counted and clock.t - start >= 120.0:
                measured_from, renders0 = clock.t, exp.cache.renders
            elif counted and clock.t - start >= minutes * 60:
                end = clock.t
        clock.t = max(clock.t + 0.05, min(clock.t + eng.due_in(), next_publish, next_scrape))
    span = end - measured_from
    import gc
    gc.collect()
    return busy / span, (exp.cache.renders - renders0) / span * 60, rss()["VmRSS"]


def scrape(exp, accept_encoding) -> None:
    body = getattr(exp, "body", exp.metrics)(accept_encoding=accept_encoding)
    del body
    if hasattr(exp, "sent"):
        exp.sent()


KEY = struct.Struct("<QIHBB")  # bpf/hotness.bpf.c struct region_key
VAL = struct.Struct("<QQQ")  # struct region_val


def bpf_fixture(cells: int, cpus: int, tgids: int, memcg_id: int, round_: int):
    """`cells` keys over `tgids` processes (regions x 2 nodes x 2 lrus each), each with `cpus`
    per-CPU values; `round_` grows the counts as aging passes would: (keys, values) numpy arrays
    holding the bytes of struct region_key and of the per-CPU struct region_val. Two large arrays
    (mmap'ed by malloc, given back whole when freed), not an object per entry: the RSS measured
    after the cycles is the source's, not what is left of the fixture in the heap. (numpy only
    builds the fixture, fast; the code measured reads the bytes.)"""
    import numpy as np
    per = cells // tgids
    n = np.arange(per * tgids, dtype=np.uint64)
    c = n % np.uint64(per)
    kdt = np.dtype([("region", "<u8"), ("tgid", "<u4"), ("memcg_id", "<u2"), ("node", "u1"), ("lru", "u1")])
    keys = np.empty(len(n), kdt)
    keys["region"] = np.uint64(0x7f0000000) + c // np.uint64(4)
    keys["tgid"] = 1000 + n // np.uint64(per)
    keys["memcg_id"] = memcg_id
    keys["node"] = (c >> np.uint64(1)) & np.uint64(1)
    keys["lru"] = c & np.uint64(1)
    ci = c[:, None] + np.arange(cpus, dtype=np.uint64)[None, :]
    v = np.empty((len(n), cpus, 3), dtype="<u8")
    v[:, :, 0] = ci % np.uint64(7) * np.uint64(round_)
    v[:, :, 1] = ci % np.uint64(3) * np.uint64(round_)
    v[:, :, 2] = np.where(ci % np.uint64(3) != 0, c[:, None] + np.uint64(10**9 * round_), 0)
    return keys, v


def bpf_worker(cells: int, cpus: int, cycles: int = 18) -> dict:
    """`cycles` cycles, the counts growing each time: from the 17th on every cell found each
    cycle keeps HISTORY (16) finds, as in a daemon that has run a while; the figure is the
    median of the last 3 (the first cycles, with short histories, cost less)."""
    from mglrud import bpfsys, memory, snapshot_json
    from mglrud.config import loads
    from mglrud.fs import FS
    from mglrud.model import Snapshot
    from mglrud.sources import bpf_hotness
    from mglrud.targets import ProcTable

    memory.tune()  # as the daemon does at start: big arrays are mappings of their own, unmapped when freed
    tgids, memcg_id = 16, 5
    tmp = Path(tempfile.mkdtemp(prefix="mglrud-scale-bpf-"))
    for t in range(tgids):
        (tmp / "proc" / str(1000 + t)).mkdir(parents=True)  # alive; no smaps: residency not read
    cfg = loads(f"bpf: {{max_regions: {max(cells, 1024)}}}\ntargets: [{{name: pods, memcg: /kubepods.slice/pod}}]\n"
                + paths_yaml(tmp))
    fs = FS(cfg.paths)

    class FakeMap(bpfsys.Map):
        def __init__(self, value_size, ncpus, fixture=None):
            self.fd, self.key_size, self.value_size = -1, KEY.size, value_size
            self.max_entries = len(fixture[0]) if fixture else 1
            self.type, self.percpu, self.ncpus = 0, True, ncpus
            self.slot = (value_size + 7) // 8 * 8
            self._fixture = fixture

        def batches(self):  # the kernel's batches of 4096, as BPF_MAP_LOOKUP_BATCH fills them in; the
            if not self._fixture:  # copy out of the buffer is bpfsys' own (ctypes.string_at): counted here too
                return
            keys, values = self._fixture
            for i in range(0, len(keys), 4096):
                yield keys[i:i + 4096].tobytes(), values[i:i + 4096].tobytes(), len(keys[i:i + 4096])

        def lookup(self, key):
            return bytes(8 * self.ncpus)

        def delete(self, key):
            return True

    prog = object.__new__(bpf_hotness.Program)
    prog.event, prog._held, prog.compile_seconds, prog.capacity = "mm_vmscan_lru_gen_young", [], 0.0, cells
    prog.set_targets = lambda tgids, ids: None
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fs, loader=lambda c, f: prog)
    src.start()
    index = {"/kubepods.slice/pod": memcg_id}
    times = []
    data = None
    for r in range(cycles):
        prog.maps = {"heat": FakeMap(VAL.size, cpus, bpf_fixture(cells, cpus, tgids, memcg_id, r + 1)),
                     "stats": FakeMap(8, cpus)}
        procs = ProcTable(fs, cfg.targets)
        dt, data = cpu(lambda: src.cycle(cfg.targets, index, procs))
        times.append(dt)
        prog.maps = {}  # the fixture's bytes: not the source's memory
        if trims_at_publish():  # the previous cycle's data freed (the daemon: its snapshot, at publish)
            memory.trim()
    assert data is not None and sum(len(t.regions) for t in data.targets) == cells, "every cell reached the snapshot"
    import gc
    gc.collect()
    out = {"bpf_cycle": statistics.median(times[-3:])}
    out.update(rss())  # the source's state and the snapshot's data, the fixture's bytes freed
    snap = Snapshot(taken_at=1.8e9, page_size=4096, cold_thresholds=cfg.metrics.cold_thresholds,
                    idle_age_buckets=cfg.metrics.buckets, sources=(src.status(),), hotness=data)
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry
    from mglrud.collectors import bpf as bpf_families

    class Families:
        def collect(self):
            return bpf_families.families(snap)

    registry = CollectorRegistry()
    registry.register(Families())
    out["bpf_render"] = statistics.median(cpu(lambda: generate_latest(registry))[0] for _ in range(3))
    out["bpf_json_bytes"] = len(snapshot_json.to_json(snap).encode())
    if hasattr(snapshot_json, "Query"):  # before: /snapshot.json has no filter
        out["bpf_json_pid_bytes"] = len(snapshot_json.to_json(snap, snapshot_json.Query(pid=1000)).encode())
    fields = getattr(snapshot_json.Query, "__dataclass_fields__", {})
    if "form" in fields:
        out["bpf_json_pid_columns_bytes"] = len(snapshot_json.to_json(
            snap, snapshot_json.Query(pid=1000, form="columns")).encode())
    if "found" in fields:  # what `mglrud heatmap` asks
        out["bpf_json_pid_heatmap_bytes"] = len(snapshot_json.to_json(
            snap, snapshot_json.Query(pid=1000, form="columns", found=1)).encode())
    return out


def residency_worker(gib: float = 1.0) -> dict:
    from mglrud.model import hotness as H
    size = int(gib * (1 << 30))
    page = os.sysconf("SC_PAGE_SIZE")
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, size, page):  # touch every page: all resident
        m[off] = 1
    import ctypes
    start = ctypes.addressof(ctypes.c_char.from_buffer(m))
    vma = H.Vma(start, start + size, "", False)
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // page * 8)
        data = f.read(size // page * 8)
    # CPU time (the kernel's walk is this process's system time) is what a read costs; wall time
    # on this shared machine also holds the time the process waited for a core
    out["pagemap_read"] = (time.process_time() - c0) / gib
    out["pagemap_read_wall"] = (time.perf_counter() - t0) / gib
    entries = memoryview(data).cast("Q")
    pfns = sorted(e & H.PM_PFN_MASK for e in entries[::4096])
    mid = pfns[len(pfns) // 2]  # two "nodes": the PFNs below and above the median
    node_of = H.pfn_node_table([(0, mid, 0), (mid, 1 << 52, 1)])
    # warm-up on one region (imports, e.g. numpy's ~250 ms, are paid once by a daemon, not per read)
    H.residency_one_node(vma, data[:4096], page, 21, 0)
    H.residency(vma, entries[:512].tolist(), page, 21, node_of)
    def rep(f, n=5):  # the median of n: one decode is ms, the shared machine's noise as much
        times, r = [], None
        for _ in range(n):
            dt, r = cpu(f)
            times.append(dt)
        return statistics.median(times), r

    dt, one = rep(lambda: H.residency_one_node(vma, data, page, 21, 0))
    out["residency_one"] = dt / gib
    # what read_residency() hands residency(): a list of ints (before) or pagemap's bytes (after)
    import inspect
    from mglrud.sources import bpf_heat
    as_list = ".tolist()" in inspect.getsource(bpf_heat.read_residency)
    dt, two = rep(lambda: H.residency(vma, entries.tolist() if as_list else data, page, 21, node_of))
    out["residency_two"] = dt / gib
    # two nodes as the shipped unit reads them (no CAP_SYS_ADMIN: no PFNs): move_pages(2) per chunk
    # (real system calls on this process's pages; one node on this host) and the status decode
    dt, mp = rep(lambda: bpf_heat.residency_move_pages(os.getpid(), vma, data, page, 21), 3)
    out["residency_move_pages"] = dt / gib
    assert sum(mp.values()) == size // page
    assert sum(one.values()) == sum(two.values()) == size // page, "every page resident and counted"
    del entries
    m.close()
    return out


CYCLE_S = 10.0  # the simulated daemon's cycle: snapshot.interval's default
CYCLES = 24  # two bpf.residency_max_age (2m, the default) of them
DROP = 32 << 20  # the "changed" case: this much dropped, and faulted in again the next cycle


def _workload(size: int, page: int):
    """A child process holding `size` bytes of anonymous memory in 4 KiB pages, every page touched;
    each byte written to its pipe makes it drop (odd steps) or fault in again (even steps) DROP
    bytes at the next offset, then answer. (pid, command pipe, answer pipe)."""
    cmd_r, cmd_w = os.pipe()
    ans_r, ans_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python allocations between commands (its RSS counters stay put)
        try:
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_NOHUGEPAGE)
            for off in range(0, size, page):
                m[off] = 1
            os.write(ans_w, b"r")
            step = 0
            while os.read(cmd_r, 1):
                at = (step // 2 * DROP * 5) % (size - DROP)
                if step % 2 == 0:
                    m.madvise(mmap.MADV_DONTNEED, at, DROP)
                else:
                    for off in range(at, at + DROP, page):
                        m[off] = 1
                step += 1
                os.write(ans_w, b"k")
        finally:
            os._exit(0)
    os.read(ans_r, 1)
    return pid, cmd_w, ans_r


def residency_cycles_worker(gib: float = 1.0) -> dict:
    """The residency read of one process over CYCLES simulated cycles (CYCLE_S apart), as the BPF
    source does it each cycle: before, read_residency() in full each cycle; after, through the
    source's ResidencyCache (bpf.residency_max_age: 2m) where the tree has it. Cases: a quiet
    process (nothing changes) and a changed one (DROP bytes dropped or faulted in again between
    every two cycles); one node (this host's zones) and two nodes from the PFNs (this host's
    PFNs split in two at their median). CPU time of this (the reading) process, mean per cycle
    (max-age refreshes included), the median and the worst cycle, per GiB. After the changes stop,
    the cache's answer must equal a fresh read within ROLL_ROUNDS cycles (asserted)."""
    import signal

    from mglrud.config import Paths
    from mglrud.fs import FS
    from mglrud.model import hotness as H
    from mglrud.sources import bpf_heat
    size = int(gib * (1 << 30))
    page = os.sysconf("SC_PAGE_SIZE")
    fs = FS(Paths())
    one = bpf_heat.node_of_pfn(fs)
    out = {}
    cached = hasattr(bpf_heat, "ResidencyCache")
    for case in ("quiet", "changed"):
        pid, cmd, ans = _workload(size, page)
        try:
            r = bpf_heat.read_residency(fs, pid, 21, page, one, None)
            mapping = max(r[0], key=lambda s: s[1] - s[0])
            pm = open(f"/proc/{pid}/pagemap", "rb")
            pm.seek(mapping[0] // page * 8)
            pfns = sorted(e & H.PM_PFN_MASK for e in memoryview(pm.read(size // page * 8)).cast("Q")[::512])
            pm.close()
            mid = pfns[len(pfns) // 2]
            two = (H.pfn_node_table([(0, mid, 0), (mid, 1 << 52, 1)]), None)
            # two nodes as the shipped unit reads them (no CAP_SYS_ADMIN: no PFNs): move_pages(2)
            for label, nodes, status_of in (("one", one, None), ("two", two, None),
                                            ("mp", (one[0], None), bpf_heat.move_pages_status)):
                cache = bpf_heat.ResidencyCache(120.0) if cached else None
                times = []
                for c in range(CYCLES + 1):
                    if case == "changed" and c:
                        os.write(cmd, b"c")
                        os.read(ans, 1)
                    t = time.process_time()
                    if cache is None:
                        got = bpf_heat.read_residency(fs, pid, 21, page, nodes, status_of)
                    else:
                        cache.begin()
                        got = cache.read(fs, pid, 21, page, nodes, 1000.0 + c * CYCLE_S, status_of)
                    if c:  # the first read: the process is new to the daemon
                        times.append(time.process_time() - t)
                if cache is not None:  # when the changes stop, what was read is what there is
                    for c in range(bpf_heat.ROLL_ROUNDS):
                        cache.begin()
                        got = cache.read(fs, pid, 21, page, nodes, 1000.0 + (CYCLES + 1 + c) * CYCLE_S, status_of)
                    assert got == bpf_heat.read_residency(fs, pid, 21, page, nodes, status_of), "the cache caught up"
                    out[f"cyc_{case}_{label}_full_reads"] = cache.full_reads
                    out[f"cyc_{case}_{label}_maps_refreshes"] = getattr(cache, "maps_refreshes", 0)
                out[f"cyc_{case}_{label}_mean"] = statistics.mean(times) / gib
                out[f"cyc_{case}_{label}_median"] = statistics.median(times) / gib
                out[f"cyc_{case}_{label}_max"] = max(times) / gib
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(cmd)
            os.close(ans)
    # the parts of a full read, on the quiet workload (a fresh one), per GiB: smaps, maps, statm
    pid, cmd, ans = _workload(size, page)
    try:
        for name in ("smaps", "maps", "statm"):
            ts = []
            for _ in range(5):
                t = time.process_time()
                with open(f"/proc/{pid}/{name}") as f:
                    f.read()
                ts.append(time.process_time() - t)
            out[f"part_{name}"] = statistics.median(ts) / gib
        ts = []
        for _ in range(5):
            t = time.process_time()
            bpf_heat.read_residency(fs, pid, 21, page, one, None)
            ts.append(time.process_time() - t)
        out["part_read_residency"] = statistics.median(ts) / gib
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(cmd)
        os.close(ans)
    return out


WORKERS = {"memcg": lambda a: memcg_worker(int(a[0])), "bpf": lambda a: bpf_worker(int(a[0]), int(a[1])),
           "residency": lambda a: residency_worker(),
           "residency_cycles": lambda a: residency_cycles_worker()}


# ---------------------------------------------------------------- the driver

def run_worker(root: Path, what: str, *args) -> dict:
    r = subprocess.run([PY, str(Path(__file__).resolve()), "--worker", str(root), what, *map(str, args)],
                       capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if r.returncode:
        raise SystemExit(f"worker {root} {what} {args} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def extract(rev: str, into: Path) -> str:
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(into)  # our own repository's files
    return sha


def med(results: list[dict], key: str):
    xs = [r[key] for r in results if key in r]
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--slow-runs", type=int, default=1, help="runs of the before side's slowest items (BPF, 3000)")
    p.add_argument("--sizes", default="10,160,1000,3000", help="memcg counts; empty: no memcg part")
    p.add_argument("--cells", type=int, default=65536)
    p.add_argument("--parts", default="memcg,bpf,residency", help="which tables to measure")
    p.add_argument("--before", default="")
    p.add_argument("--after", default="", help="a revision to measure instead of this working tree")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "scale.txt"))
    args = p.parse_args(argv)
    if args.worker:
        root, what, *rest = args.worker
        sys.path.insert(0, root)
        print(json.dumps(WORKERS[what](rest)))
        return 0

    before_rev = args.before or subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"],
                                               capture_output=True, text=True, check=True).stdout.strip()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else []
    with tempfile.TemporaryDirectory(prefix="mglrud-scale-before-") as tmp:
        before_sha = extract(before_rev, Path(tmp) / "before")
        after = Path(tmp) / "after"
        after_sha = extract(args.after, after) if args.after else "the working tree"
        roots = {"before": Path(tmp) / "before", "after": after if args.after else REPO}
        res: dict = {}
        parts = set(args.parts.split(","))
        jobs = ([("memcg", n) for n in sizes] if "memcg" in parts else []) + \
               ([("bpf", args.cells, 2), ("bpf", args.cells, 64)] if "bpf" in parts else []) + \
               ([("residency",)] if "residency" in parts else []) + \
               ([("residency_cycles",)] if "residency" in parts or "residency_cycles" in parts else [])
        for i in range(args.runs):
            for job in jobs:
                for side in ("before", "after"):
                    slow = side == "before" and (job[0] == "bpf" or (job[0] == "memcg" and job[1] >= 3000))
                    if slow and i >= args.slow_runs:
                        continue
                    t0 = time.monotonic()
                    r = run_worker(roots[side], *job)
                    res.setdefault((side,) + job, []).append(r)
                    print(f"run {i + 1}/{args.runs} {side} {job}: {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    lines = table(res, sizes, args, before_sha, after_sha)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    Path(args.out).write_text(text)
    return 0


def fmt_ms(x):
    return "—" if x is None else (f"{x * 1000:.0f} ms" if x >= 0.1 else f"{x * 1000:.1f} ms" if x >= 0.001
                                 else f"{x * 1e6:.0f} µs")


def fmt_b(x):
    return "—" if x is None else f"{x / (1 << 20):.1f} MiB" if x >= 1 << 20 else f"{x / 1024:.0f} KiB"


def table(res, sizes, args, before_sha, after_sha) -> list[str]:
    def cell(key, job, f):
        b, a = med(res.get(("before",) + job, []), key), med(res.get(("after",) + job, []), key)
        ratio = f" ({b / a:.1f}x)" if a and b and key not in ("series",) and abs(b / a - 1) > 0.05 else ""
        return f"{f(b)} → {f(a)}{ratio}"

    rows = [("series on /metrics", "series", lambda x: "—" if x is None else f"{x:,.0f}"),
            ("one scrape: the first of a snapshot (renders it; CPU)", "scrape_first", fmt_ms),
            ("the same bytes, already rendered (CPU)", "scrape_cached", fmt_ms),
            ("one steady cycle (1/6 of memcgs due; CPU)", "steady", fmt_ms),
            ("one age_all cycle (CPU)", "age_all", fmt_ms),
            ("loop: wake-ups a minute (1 min aging, 10 s snapshots)", "wakeups_per_min",
             lambda x: "—" if x is None else f"{x:.0f}"),
            ("loop busy (% of one core)", "loop_busy", lambda x: "—" if x is None else f"{x * 100:.2f} %"),
            ("the daemon, scraped every 15 s (gzip): renders a minute", "renders_per_min_15",
             lambda x: "—" if x is None else f"{x:.1f}"),
            ("the daemon, scraped every 15 s: % of one core (loop, renders, scrapes)", "daemon_share_15",
             lambda x: "—" if x is None else f"{x * 100:.2f} %"),
            ("the daemon, scraped every 60 s (gzip): renders a minute", "renders_per_min_60",
             lambda x: "—" if x is None else f"{x:.1f}"),
            ("the daemon, scraped every 60 s: % of one core (loop, renders, scrapes)", "daemon_share_60",
             lambda x: "—" if x is None else f"{x * 100:.2f} %"),
            ("/snapshot.json", "json_bytes", fmt_b),
            ("RSS after two plain scrapes of one snapshot, no publish in view (its text kept)", "VmRSS", fmt_b),
            ("RSS after the daemon scraped every 15 s (gzip, as Prometheus asks)", "rss_gzip_15", fmt_b),
            ("RSS after the daemon scraped every 60 s (gzip)", "rss_gzip_60", fmt_b),
            ("the daemon, scraped every 15 s WITHOUT gzip: % of one core", "daemon_share_15_plain",
             lambda x: "—" if x is None else f"{x * 100:.2f} %"),
            ("RSS after the daemon scraped every 15 s without gzip", "rss_plain_15", fmt_b)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [f"# bench/scale.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: /usr/bin/python3 bench/scale.py --runs {args.runs} --slow-runs {args.slow_runs} "
           f"--sizes '{args.sizes}' --cells {args.cells} --parts {args.parts} "
           f"--before {args.before or 'merge-base'}",
           f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average at end {load} (shared machine: read ratios)",
           f"# before = {before_sha}, after = {after_sha} (git archive into a temp dir); each figure: median of "
           f"{args.runs} runs ({args.slow_runs} for the before side's 3000-memcg and BPF runs), one fresh "
           f"subprocess each, before and after interleaved",
           "# SYNTHETIC fixtures in the kernel's formats; each cell: before → after (before/after)",
           "",
           ]
    parts = set(args.parts.split(","))
    if sizes and "memcg" in parts:
        out += ["| what | " + " | ".join(f"{n} memcgs" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for label, key, f in rows:
            out.append(f"| {label} | " + " | ".join(cell(key, ("memcg", n), f) for n in sizes) + " |")
        each = lambda side, n: ", ".join(f"{r['daemon_share_15'] * 100:.2f} %"  # noqa: E731
                                         for r in res.get((side, "memcg", n), []) if "daemon_share_15" in r)
        out.append("| the daemon, scraped every 15 s (gzip): each run, in order | "
                   + " | ".join(f"{each('before', n)} → {each('after', n)}" for n in sizes) + " |")
        hw = [f"{fmt_b(med(res.get((s, 'memcg', sizes[-1]), []), 'VmHWM'))}" for s in ("before", "after")]
        out.append(f"| peak RSS (VmHWM) at {sizes[-1]} memcgs | {hw[0]} → {hw[1]} |")
    if "bpf" in parts:
        out += ["", f"BPF source, {args.cells} cells (16 processes), synthetic map values through the real Program's "
                    f"read (residency excluded), 18 cycles with counts growing each time (from the 17th every cell "
                    f"keeps 16 finds); CPU:", "",
                "| what | 2 CPUs | 64 CPUs |", "|---|---|---|"]
        for label, key, f in (("one steady cycle (read, combine, step, assemble; median of the last 3)", "bpf_cycle",
                               fmt_ms),
                              ("render its BPF metric families (one snapshot, text format)", "bpf_render", fmt_ms),
                              ("/snapshot.json, everything", "bpf_json_bytes", fmt_b),
                              ("/snapshot.json?pid=P, one process", "bpf_json_pid_bytes", fmt_b),
                              ("/snapshot.json?pid=P&form=columns", "bpf_json_pid_columns_bytes", fmt_b),
                              ("/snapshot.json?pid=P&form=columns&found=1 (what heatmap asks)",
                               "bpf_json_pid_heatmap_bytes", fmt_b),
                              ("RSS after the cycles (fixture freed)", "VmRSS", fmt_b)):
            out.append(f"| {label} | " + " | ".join(cell(key, ("bpf", args.cells, c), f) for c in (2, 64)) + " |")
    if "residency" not in parts:
        return out
    out += ["", "Residency from a real /proc/self/pagemap read of a 1 GiB anonymous mapping, every page touched:", "",
            "| what | per GiB |", "|---|---|"]
    for label, key in (("read pagemap (2 MiB of entries; CPU, the kernel's walk)", "pagemap_read"),
                       ("the same read, wall (waits for a core on a loaded machine)", "pagemap_read_wall"),
                       ("decode, one node (CPU)", "residency_one"),
                       ("decode, two nodes from PFNs (CPU; as read_residency passes the entries)", "residency_two"),
                       ("two nodes by move_pages(2): system calls + decode (CPU)", "residency_move_pages")):
        out.append(f"| {label} | {cell(key, ('residency',), fmt_ms)} |")
    return out + residency_cycles_table(res)


def residency_cycles_table(res) -> list[str]:
    job = ("residency_cycles",)
    if not res.get(("after",) + job):
        return []

    def cell(key):
        b, a = med(res.get(("before",) + job, []), key), med(res.get(("after",) + job, []), key)
        ratio = f" ({b / a:.1f}x)" if a and b and abs(b / a - 1) > 0.05 else ""
        return f"{fmt_ms(b)} → {fmt_ms(a)}{ratio}"

    out = ["", f"Residency per cycle of one process holding 1 GiB in 4 KiB pages (a child of the bench, every page "
               f"touched), {CYCLES} cycles {CYCLE_S:.0f} s apart (simulated; bpf.residency_max_age 2m after), CPU "
               f"time of the reading process per GiB of target; 'changed': {DROP >> 20} MiB dropped or faulted in "
               f"again between every two cycles:", "",
           "| what (CPU per GiB) | one node | two nodes (PFNs) | two nodes (move_pages(2), the shipped unit) |",
           "|---|---|---|---|"]
    for case in ("quiet", "changed"):
        for stat, what in (("mean", "mean per cycle (max-age refreshes included)"), ("median", "median cycle"),
                           ("max", "worst cycle")):
            out.append(f"| {case}: {what} | " + " | ".join(cell(f"cyc_{case}_{n}_{stat}") for n in ("one", "two", "mp"))
                       + " |")
        for key, what in (("full_reads", "smaps reads (the first read included)"),
                          ("maps_refreshes", "max-age refreshes without smaps")):
            fr = [med(res.get(("after",) + job, []), f"cyc_{case}_{n}_{key}") for n in ("one", "two", "mp")]
            out.append(f"| {case}: {what} in {CYCLES + 1 + 6} reads, after | "
                       + " | ".join("—" if x is None else f"{x:.0f}" for x in fr) + " |")
    for name, what in (("smaps", "read /proc/PID/smaps (the kernel's page walk for Rss, PSS)"),
                       ("maps", "read /proc/PID/maps (no page walk)"), ("statm", "read /proc/PID/statm"),
                       ("read_residency", "read_residency() in full (smaps + pagemap + decode, one node)")):
        out.append(f"| {what} | {cell('part_' + name)} | | |")
    return out


if __name__ == "__main__":
    sys.exit(main())
