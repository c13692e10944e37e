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
  Set `procfs.clear_refs: false` to only read; accessed bytes are then not
  reported (Referenced would count since an unknown time).
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
root. A process that exits between listing and reading (ENOENT, ESRCH, an empty
smaps for a zombie) is counted as `exited`, not an error; a process that cannot
be read gives its target a sentence saying why.

`parse_smaps(text)` and `parse_numa_maps(text)` are pure; `ProcfsSource` is the
I/O edge and keeps the only state (per process: when its interval began, and
per mapping when it was last seen accessed).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mglrud.config import Target, memcg_matches
from mglrud.fs import FS
from mglrud.mappings import (MappingHeat, ProcessHeat, ProcfsData, ProcfsStats,
                             ProcfsTarget)
from mglrud.targets import Proc, _selects, proc_cgroup

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

# Mappings whose pages live on the anon LRU although smaps counts them outside `Anonymous`:
# shared anonymous memory (/dev/zero), memfd, SysV and POSIX shared memory are shmem,
# which is swap-backed (mm/shmem.c), so reclaim treats it as anon.
_SHMEM_PREFIXES = ("/dev/zero", "/memfd:", "/SYSV", "/dev/shm/", "[anon_shmem:")

_HEADER = re.compile(r"([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][psS]) ([0-9a-f]+) (\S+) (\d+)(?: +(.*))?")
_FIELD = re.compile(r"(\w+): +(\d+) kB")


class ParseError(ValueError):
    pass


# ---------------------------------------------------------------- pure parsers

@dataclass(frozen=True)
class SmapsEntry:
    """One /proc/PID/smaps record; sizes in bytes, `fields` holds every `Key: N kB` line."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str  # as the kernel prints it: "", "/usr/lib/x.so", "[heap]", "/memfd:x (deleted)"
    fields: dict = field(default_factory=dict, compare=False)
    vmflags: tuple[str, ...] = ()

    def get(self, key: str) -> int:
        return self.fields.get(key, 0)

    @property
    def rss(self) -> int:
        return self.get("Rss")

    @property
    def anonymous(self) -> int:
        return self.get("Anonymous")

    @property
    def referenced(self) -> int:
        return self.get("Referenced")

    @property
    def swap(self) -> int:
        return self.get("Swap")


def parse_smaps(text: str) -> tuple[SmapsEntry, ...]:
    """/proc/PID/smaps text -> one SmapsEntry per mapping, in address order."""
    out: list[SmapsEntry] = []
    cur: dict | None = None

    def flush() -> None:
        if cur is not None:
            out.append(SmapsEntry(**cur))

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if m := _FIELD.fullmatch(line):
            if cur is None:
                raise ParseError(f"line {lineno}: {m.group(1)} before any mapping line")
            cur["fields"][m.group(1)] = int(m.group(2)) * 1024
            continue
        if m := _HEADER.fullmatch(line):
            flush()
            cur = dict(start=int(m.group(1), 16), end=int(m.group(2), 16), perms=m.group(3),
                       offset=int(m.group(4), 16), dev=m.group(5), inode=int(m.group(6)),
                       path=(m.group(7) or "").rstrip(" "), fields={})
            if cur["end"] < cur["start"]:
                raise ParseError(f"line {lineno}: mapping ends before it starts: {line!r}")
            continue
        key, sep, rest = line.partition(":")
        if not sep or cur is None or " " in key:
            raise ParseError(f"line {lineno}: unexpected {line!r}")
        if key == "VmFlags":
            cur["vmflags"] = tuple(rest.split())
        # Unitless lines (THPeligible, ProtectionKey) carry nothing mglrud uses.
    flush()
    return tuple(out)


@dataclass(frozen=True)
class NumaEntry:
    """One /proc/PID/numa_maps line: pages per node, in units of `page_size` bytes."""

    start: int
    policy: str
    nodes: tuple[tuple[int, int], ...]  # (node, pages), ascending node
    page_size: int
    anon: int = 0  # pages
    mapped: int = 0

    def node_bytes(self) -> tuple[tuple[int, int], ...]:
        return tuple((n, pages * self.page_size) for n, pages in self.nodes)


def parse_numa_maps(text: str) -> tuple[NumaEntry, ...]:
    """/proc/PID/numa_maps text -> one NumaEntry per mapping.

    A line is `ADDRESS POLICY [key=value | flag]...`: `N<node>=<pages>`,
    `kernelpagesize_kB=<size>` (huge pages count in huge-page units), anon=,
    mapped=, file= (spaces in paths are escaped as \\040, so words split on
    blanks), and flags like heap, stack, huge. A mapping without resident pages
    has no N<node> words and no kernelpagesize_kB.
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) < 2:
            raise ParseError(f"line {lineno}: unexpected {line!r}")
        try:
            start = int(words[0], 16)
        except ValueError:
            raise ParseError(f"line {lineno}: no address in {line!r}") from None
        nodes, page_size, counts = [], 4096, {}
        for w in words[2:]:
            key, sep, value = w.partition("=")
            if not sep:
                continue  # a flag: heap, stack, huge, ...
            try:
                if key[:1] == "N" and key[1:].isdigit():
                    nodes.append((int(key[1:]), int(value)))
                elif key == "kernelpagesize_kB":
                    page_size = int(value) * 1024
                elif key in ("anon", "mapped"):
                    counts[key] = int(value)
            except ValueError:
                raise ParseError(f"line {lineno}: cannot read {w!r}") from None
        out.append(NumaEntry(start, words[1], tuple(sorted(nodes)), page_size, **counts))
    return tuple(out)


def mapping_name(path: str) -> str:
    """A name that stays the same for the life of a mapping, for labels and for matching intervals."""
    if not path:
        return "[anon]"
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    return path


def is_shmem(path: str) -> bool:
    return path.startswith(_SHMEM_PREFIXES)


def lru_split(e: SmapsEntry) -> tuple[int, int]:
    """(anon, file) resident bytes: which LRU the mapping's pages are on."""
    if is_shmem(e.path):
        return e.rss, 0
    anon = min(e.anonymous, e.rss)
    return anon, e.rss - anon


# ---------------------------------------------------------------- process selection

@dataclass(frozen=True)
class Candidate:
    pid: int
    comm: str
    rss_bytes: int


@dataclass(frozen=True)
class Selection:
    """A target and its processes, largest resident set first."""

    target: Target
    candidates: tuple[Candidate, ...]
    problem: str = ""


def read_rss(fs: FS, pid: int, page_size: int) -> int:
    """Resident bytes from /proc/PID/statm (cheap: no page-table walk); 0 when gone or a kernel thread."""
    try:
        return int(fs.proc(pid, "statm").read_text().split()[1]) * page_size
    except (OSError, IndexError, ValueError):
        return 0


def start_time(fs: FS, pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, it tells a process from a later one with the same pid."""
    try:
        text = fs.proc(pid, "stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may itself contain ") ".
    rest = text[text.rfind(")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def scan_procs(fs: FS, cmdline: bool) -> list[Proc]:
    """Every process, as targets.scan_procs lists them, but kept on a cgroup v1-only host.

    Hosts without MGLRU are often old enough to have no cgroup v2 line in
    /proc/PID/cgroup; a process target must still find its processes there, and
    such a process counts as in the root cgroup "/" (so the default `/**` covers it).
    """
    try:
        pids = sorted(int(p.name) for p in fs.proc().iterdir() if p.name.isdigit())
    except OSError:
        return []
    out = []
    for pid in pids:
        try:
            comm = fs.proc(pid, "comm").read_text().rstrip("\n")
            cgroup = proc_cgroup(fs.proc(pid, "cgroup").read_text()) or "/"
            cmd = (fs.proc(pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                   if cmdline else "")
        except OSError:  # exited meanwhile (ENOENT, ESRCH) or not readable
            continue
        out.append(Proc(pid, comm, cmd, cgroup))
    return out


def _matches(t: Target, p: Proc) -> bool:
    if t.kind == "memcg":
        # A memcg target covers the processes in the cgroups it matches.
        return memcg_matches(t.pattern, p.cgroup)
    return _selects(t, p)


def select(targets: Iterable[Target], fs: FS, exclude: Iterable[int] = (),
           page_size: int | None = None) -> tuple[Selection, ...]:
    """Every target's processes, largest RSS first; mglrud itself (`exclude`) and kernel threads left out."""
    targets = tuple(targets)
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    skip = set(exclude)
    procs = [p for p in scan_procs(fs, cmdline=any(t.kind == "cmdline" for t in targets)) if p.pid not in skip]
    rss: dict[int, int] = {}
    out = []
    for t in targets:
        chosen = []
        for p in procs:
            if _matches(t, p):
                if p.pid not in rss:
                    rss[p.pid] = read_rss(fs, p.pid, page_size)
                if rss[p.pid] > 0:
                    chosen.append(Candidate(p.pid, p.comm, rss[p.pid]))
        chosen.sort(key=lambda c: (-c.rss_bytes, c.pid))
        problem = "" if chosen else f"no running process with {t.kind} {t.value}"
        out.append(Selection(t, tuple(chosen), problem))
    return tuple(out)


# ---------------------------------------------------------------- the I/O edge

class Exited(Exception):
    """The process went away while being read."""


class Denied(Exception):
    """No access to the process; the message is the sentence a user reads."""


def _clear_refs(fs: FS, pid: int) -> None:
    # No O_CREAT/O_TRUNC: procfs needs neither, and a vanished process must fail, not create.
    fd = os.open(fs.proc(pid, "clear_refs"), os.O_WRONLY)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def _read(fs: FS, pid: int, name: str) -> str:
    return fs.proc(pid, name).read_text(errors="surrogateescape")


def _oserror(e: OSError, pid: int, what: str) -> Exception:
    if isinstance(e, (FileNotFoundError, ProcessLookupError)) or e.errno == errno.ESRCH:
        return Exited()
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        uid = os.geteuid()
        who = "root" if uid == 0 else f"uid {uid}"
        return Denied(f"permission denied {what} /proc/{pid}: mglrud runs as {who} and needs ptrace access "
                      f"to the process (PTRACE_MODE_READ; run as root with CAP_SYS_PTRACE, and check "
                      f"kernel.yama.ptrace_scope and LSM policy)")
    return e


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
                 top_mappings: int = DEFAULT_TOP_MAPPINGS, clear_refs: bool = True,
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

    def reconfigure(self, *, max_processes: int, top_mappings: int, clear_refs: bool) -> None:
        """Take new settings on reload; intervals and idle times carry over."""
        self.max_processes, self.top_mappings, self.clear = max_processes, top_mappings, clear_refs

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

    def read(self, targets: Iterable[Target], force: bool = False, clear: bool = True) -> ProcfsData:
        """Read and clear every due target's processes; return all targets' latest data.

        `clear=False` reads every target without writing clear_refs and without
        starting its schedule: the daemon's first cycle, and `mglrud snapshot --no-age`.
        """
        targets = tuple(targets)
        now = self.clock()
        due = [t for t in targets if force or not clear or self.next_due.get(t.name, 0.0) <= now]
        if due:
            for sel in select(due, self.fs, self.exclude, self.page_size):
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
        if st is None:
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
                _clear_refs(self.fs, pid)
                cleared = True
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
