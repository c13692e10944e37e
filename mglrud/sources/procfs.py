"""Source: /proc/PID/smaps, /proc/PID/numa_maps and /proc/PID/clear_refs, for kernels without MGLRU.

All three are documented in Documentation/filesystems/proc.rst ("3.x
/proc/<pid>/smaps", "/proc/<pid>/numa_maps", "/proc/<pid>/clear_refs"); the
code is fs/proc/task_mmu.c. They need neither CONFIG_LRU_GEN nor mglrud's
kernel patch, so this source tells the truth a stock kernel can: which mappings
of which processes are hot and which are cold, at mapping granularity.

How access is measured. smaps `Referenced` counts the resident bytes of a
mapping whose page-table accessed bit (or the page's referenced/young flag) is
set. Writing "1" to clear_refs clears those bits for every page of the process,
so `Referenced` read one interval after a clear is the bytes accessed during
that interval. Each read therefore goes: read smaps (and numa_maps), then write
"1" to clear_refs to start the next interval. The first read of a process only
starts an interval; its accessed bytes are unknown until the second.

What that costs and changes -- read this before pointing it at production:
- clear_refs walks every page table of the process while holding its mmap lock
  for writing (fs/proc/task_mmu.c: clear_refs_write() takes
  mmap_write_lock_killable()): the process's page faults and mmap/munmap wait
  for the walk. Reading smaps walks the same page tables under the read lock.
  Both scale with the process's resident size: bench/procfs_cost.py measures
  the cost per GB of RSS.
- For "1" the kernel clears the accessed bits without flushing the TLB (it
  flushes only for soft-dirty, "4"). A CPU that still holds a page's
  translation in its TLB does not set the accessed bit again, so pages accessed
  only through TLB entries that survive the whole interval are missed: accessed
  bytes can undercount by up to the TLB reach (a few MiB per CPU) of very hot,
  small working sets. Seen on this project's host: a 4 MiB region written every
  20 ms showed 95 % of its bytes referenced over an interval of three passes
  (tests/fixtures/procfs), 100 % over 0.5 s intervals; a 64 MiB one 100 %.
- Accesses between the smaps read and the clear_refs write (the read-to-clear
  gap, milliseconds) are cleared without being counted.
- The accessed bits it clears are the ones reclaim looks at to decide what is
  active (folio_referenced() in mm/rmap.c): right after a clear, every page looks
  unreferenced, so pages accessed once before the clear and not since are easier
  to reclaim than they would have been. cAdvisor's referenced-bytes metric
  (--disable_metrics=referenced_memory to turn it off) clears them the same way.
  So clear_refs is OFF unless `procfs.clear_refs: true` (as cAdvisor keeps its
  referenced-bytes metric off by default): the source then only reads, and
  reports resident, anon/file, swap and NUMA node bytes per mapping; accessed
  bytes, idle and cold times are not reported (Referenced would count since an
  unknown time), and ProcfsData.clear_refs says so.
- A page shared by several processes carries one referenced flag: a clear in
  one process resets the flag the others' smaps also look at.

Which processes. A process target (pid, comm, cmdline, unit) selects the
processes it matches; a memcg target selects the processes whose cgroup
(/proc/PID/cgroup) it matches, so the built-in default target `all` (memcg
`/**`, used when the config names no targets) covers every process. Of each
target's processes the `max_processes` largest by RSS (statm; default 5) that
can be read are read (trying at most 4 times as many), and mglrud itself never is. So on a host without MGLRU, `mglrud run`
with no config reports the 5 largest processes. Each target is read on its
`interval` (the same per-target interval lru_gen ages on).

Reading needs ptrace access to the process (PTRACE_MODE_READ, checked when
smaps is opened) and clear_refs is writable only by the owner; mglrud runs as
root. So the write is careful about what it writes to: clear_refs is opened
with O_NOFOLLOW through the /proc/PID directory (itself opened O_NOFOLLOW), and
only when the process's start time there is still the one it had when the
target listed it (a pid reused since, perhaps by another user's process, is
counted as `exited`, not cleared). A process that exits between listing and reading (ENOENT, ESRCH, an empty
smaps for a zombie) is counted as `exited`, not an error; a process that cannot
be read gives its target a sentence saying why.

The parsers (sources/smaps.py) are pure; `ProcfsSource` is the
I/O edge and keeps the only state (per process: when its interval began, and
per mapping when it was last seen accessed).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mglrud.config import Config, Procfs, Target
from mglrud.fs import FS
from mglrud.model import SourceStatus
from mglrud.sources.base import Inputs, Part, Probe
from mglrud.sources.procfs_io import Exited, Denied, Replaced, _clear_refs, _read, _oserror  # noqa: F401
from mglrud.sources.smaps import ParseError, lru_split, mapping_name, parse_numa_maps, parse_smaps
from mglrud.model.procfs import (MappingHeat, ProcessHeat, ProcfsData, ProcfsStats,
                             ProcfsTarget)
from mglrud.targets import Candidate, ProcTable, Selection, select, start_time

log = logging.getLogger(__name__)

NAME = "procfs"

# Every reason mglrud_procfs_errors_total{reason} can carry, so all series exist from the start.
#   exited: the process went away between being listed and being read or cleared (normal);
#   eperm: no ptrace access to the process or clear_refs not writable (run as root);
#   parse: smaps or numa_maps text mglrud does not understand; other: any other OSError.
REASONS = ("exited", "eperm", "parse", "other")

DEFAULT_MAX_PROCESSES = 5
ATTEMPTS_PER_PROCESS = 4  # candidates tried per process read, at most
DEFAULT_TOP_MAPPINGS = 10

# the reads and the clear_refs write of one process, and their errors: sources/procfs_io.py

@dataclass
class _ProcState:
    start_time: int | None
    cleared_at: float | None = None  # monotonic time of our latest clear_refs
    last_access: dict = field(default_factory=dict)  # (start, name) -> monotonic end of last interval with access
    heat: ProcessHeat | None = None


class ProcfsSource:
    """Reads the selected processes of each target on its interval; clear_refs begins the next one.

    Each target is read on its own `interval` (the same per-target interval
    lru_gen ages on); between reads the snapshot keeps the latest complete read,
    so scrapes never cause a clear_refs.
    """

    def __init__(self, fs: FS, *, max_processes: int = DEFAULT_MAX_PROCESSES,
                 top_mappings: int = DEFAULT_TOP_MAPPINGS, clear_refs: bool = Procfs.clear_refs,
                 read_numa: bool | None = None, exclude: Iterable[int] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.fs = fs
        self.max_processes = max_processes
        self.top_mappings = top_mappings
        self.clear = clear_refs
        self.read_numa = self._multi_node() if read_numa is None else read_numa
        self.exclude = set(exclude) if exclude is not None else {os.getpid()}
        self.clock, self.wall = clock, wall
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.procs: dict[int, _ProcState] = {}
        self.next_due: dict[str, float] = {}
        self.errors: Counter[str] = Counter({r: 0 for r in REASONS})
        self.reads = 0
        self.read_seconds = 0.0
        self.clear_seconds = 0.0
        self.bytes_scanned = 0
        self._targets: dict[str, ProcfsTarget] = {}
        self.probe, self.why = Probe(NAME, True, ""), ""

    def reconfigure(self, *, max_processes: int, top_mappings: int, clear_refs: bool) -> None:
        """Take new settings on reload; intervals and idle times carry over."""
        self.max_processes, self.top_mappings, self.clear = max_processes, top_mappings, clear_refs

    # ------------------------------------------------------------ the Source protocol (sources/base.py)

    @classmethod
    def make(cls, config: Config, fs: FS, clock, wall) -> "ProcfsSource":
        p = config.procfs
        return cls(fs, max_processes=p.max_processes, top_mappings=p.top_mappings, clear_refs=p.clear_refs,
                   clock=clock, wall=wall)

    def configure(self, config: Config, probe: Probe, why: str) -> None:
        """A reload keeps the intervals and idle times."""
        p = config.procfs
        if probe.usable and p.clear_refs != getattr(self, "_said_clear", None):
            # Once per setting, not per cycle: /snapshot.json's procfs.accessed says it too.
            log.info("procfs: %s", "clear_refs on: accessed bytes measured (procfs.clear_refs: true)" if p.clear_refs
                     else "clear_refs off (the default): resident, anon/file, swap and node bytes only; "
                          "accessed bytes need procfs.clear_refs: true")
            self._said_clear = p.clear_refs
        self.reconfigure(max_processes=p.max_processes, top_mappings=p.top_mappings, clear_refs=p.clear_refs)
        self.probe, self.why = probe, why

    def reschedule(self, within: float) -> None:
        latest = self.clock() + within
        for name, due in self.next_due.items():
            self.next_due[name] = min(due, latest)

    def before_aging(self, inputs: Inputs) -> None:
        pass

    def part(self, inputs: Inputs) -> Part:
        """Not aging (the daemon's first cycle, `snapshot --no-age`) reads without clear_refs."""
        self.fs = inputs.fs
        data = self.read(inputs.config.targets, force=inputs.age_all, clear=inputs.age, procs=inputs.procs)
        status = SourceStatus(NAME, True) if self.probe.usable else SourceStatus(NAME, False, self.why)
        return Part((status,), {"procfs": data}, tuple((f"target {t.name} (procfs)", t.problem) for t in data.targets))

    def close(self) -> None:
        pass

    def _multi_node(self) -> bool:
        """numa_maps costs a second page-table walk; on one node smaps already says everything."""
        try:
            online = self.fs.sys("devices", "system", "node", "online").read_text().strip()
        except OSError:
            return False
        return online not in ("0", "")

    # ------------------------------------------------------------ the cycle

    def due_in(self) -> float:
        """Seconds until the next target is due (inf when none has been read yet)."""
        return min(self.next_due.values(), default=float("inf")) - self.clock()

    def read(self, targets: Iterable[Target], force: bool = False, clear: bool = True,
             procs: ProcTable | None = None) -> ProcfsData:
        """Read and clear every due target's processes; return all targets' latest data.

        `clear=False` reads every target without writing clear_refs and without
        starting its schedule: the daemon's first cycle, and `mglrud snapshot --no-age`.
        """
        targets = tuple(targets)
        now = self.clock()
        due = [t for t in targets if force or not clear or self.next_due.get(t.name, 0.0) <= now]
        if due:
            for sel in select(due, self.fs, self.exclude, self.page_size, procs):
                self._read_target(sel, clear and self.clear)
                if clear:
                    self.next_due[sel.target.name] = self.clock() + sel.target.interval
        names = {t.name for t in targets}
        for name in list(self._targets):
            if name not in names:
                del self._targets[name]
                self.next_due.pop(name, None)
        live = {pid for tgt in self._targets.values() for pid in tgt.pids}
        for pid in list(self.procs):
            if pid not in live:
                del self.procs[pid]
        return ProcfsData(
            processes=tuple(s.heat for _, s in sorted(self.procs.items()) if s.heat is not None),
            targets=tuple(self._targets[t.name] for t in targets if t.name in self._targets),
            stats=ProcfsStats(self.reads, tuple(sorted(self.errors.items())), self.read_seconds,
                              self.clear_seconds, self.bytes_scanned),
            top_mappings=self.top_mappings,
            clear_refs=self.clear,
        )

    def _read_target(self, sel: Selection, clear: bool) -> None:
        read: list[int] = []
        denied: list[str] = []
        exited = 0
        # Unreadable processes are skipped so that the largest readable ones fill the
        # bound, but only so many are tried: a non-root mglrud must not try them all.
        for c in sel.candidates[:ATTEMPTS_PER_PROCESS * self.max_processes]:
            if len(read) >= self.max_processes:
                break
            try:
                self._read_process(c, sel.target.name, clear)
                read.append(c.pid)
            except Exited:
                exited += 1
                self.errors["exited"] += 1
                self.procs.pop(c.pid, None)
            except Denied as e:
                self.errors["eperm"] += 1
                denied.append(str(e))
                self.procs.pop(c.pid, None)
            except ParseError as e:
                self.errors["parse"] += 1
                denied.append(f"cannot parse /proc/{c.pid}/smaps: {e}")
            except OSError as e:
                self.errors["other"] += 1
                denied.append(f"cannot read /proc/{c.pid}: {e.strerror}")
        problem = sel.problem
        if denied:
            more = f" (and {len(denied) - 1} more)" if len(denied) > 1 else ""
            problem = f"{len(denied)} process(es) not read: {denied[0]}{more}"
        elif not read and exited:
            problem = f"its {exited} process(es) exited while being read"
        self._targets[sel.target.name] = ProcfsTarget(sel.target.name, tuple(sorted(read)), problem)

    def _read_process(self, c: Candidate, target: str, clear: bool) -> None:
        pid = c.pid
        st = start_time(self.fs, pid)
        # The pid was listed (and matched the target) earlier in the cycle: another process
        # with that pid since, perhaps another user's, is not the one the target selected.
        if st is None or (c.start is not None and st != c.start):
            raise Exited()
        state = self.procs.get(pid)
        if state is None or state.start_time != st:
            state = self.procs[pid] = _ProcState(st)

        t0 = self.clock()
        try:
            smaps = parse_smaps(_read(self.fs, pid, "smaps"))
            numa = parse_numa_maps(_read(self.fs, pid, "numa_maps")) if self.read_numa else ()
        except OSError as e:
            raise _oserror(e, pid, "reading") from None
        t1 = self.clock()
        # A zombie (or a process that exited mid-read) has no mm: smaps is empty
        # or cut short. Trust the text only if the same process is still there.
        if not smaps or start_time(self.fs, pid) != st:
            raise Exited()
        cleared = False
        if clear:
            try:
                _clear_refs(self.fs, pid, st)
                cleared = True
            except Replaced:
                raise Exited() from None
            except OSError as e:
                raise _oserror(e, pid, "writing clear_refs of") from None
        t2 = self.clock()

        self.reads += 1
        self.read_seconds += t1 - t0
        self.clear_seconds += t2 - t1
        rss = sum(e.rss for e in smaps)
        self.bytes_scanned += rss

        # The interval just measured ran from our previous clear to this read.
        interval = (t1 - state.cleared_at) if state.cleared_at is not None else None
        nodes = {n.start: n.node_bytes() for n in numa}
        mappings = []
        seen = {}
        for e in smaps:
            name = mapping_name(e.path)
            key = (e.start, name)
            if interval is None:
                accessed, idle = None, None
                # Watching starts now: an unreferenced mapping's idle time counts from this clear.
                seen[key] = t1
            else:
                accessed = e.referenced
                if accessed > 0:
                    seen[key] = t1
                    idle = 0.0
                else:
                    # A mapping first seen now started inside the interval: idle >= 0 is all we know.
                    seen[key] = state.last_access.get(key, t1)
                    idle = t1 - seen[key]
            anon, file = lru_split(e)
            mappings.append(MappingHeat(
                start=e.start, end=e.end, name=name, perms=e.perms,
                resident_bytes=e.rss, anon_bytes=anon, file_bytes=file, swap_bytes=e.swap,
                accessed_bytes=accessed, idle_seconds=idle,
                node_bytes=nodes.get(e.start) or (((0, e.rss),) if not self.read_numa else ()),
            ))
        state.last_access = seen
        if cleared:
            state.cleared_at = t2
        state.heat = ProcessHeat(pid=pid, comm=c.comm, target=target, read_at=self.wall(),
                                 interval_seconds=interval,
                                 mappings=tuple(mappings))


def probe(fs: FS) -> Probe:
    smaps, clear = fs.proc("self", "smaps"), fs.proc("self", "clear_refs")
    try:
        text = smaps.read_text()
    except OSError as e:
        return Probe("procfs", False, f"cannot read {smaps}: {e.strerror}")
    if "\nReferenced:" not in text:
        return Probe("procfs", False, f"{smaps} has no Referenced field (kernel without CONFIG_PROC_PAGE_MONITOR)")
    if not clear.exists():
        return Probe("procfs", False, f"{clear} missing (kernel without CONFIG_PROC_PAGE_MONITOR)")
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}: only processes it may ptrace can be read"
    return Probe("procfs", True, f"smaps Referenced and clear_refs available; running as {who}")
