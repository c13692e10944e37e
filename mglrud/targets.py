"""Resolve configured targets to memcgs, every cycle.

Memcg targets match cgroup v2 paths (globs allowed) against the memcgs that
/sys/kernel/debug/lru_gen lists. Process targets (pid, comm, cmdline regex,
systemd unit) are found in /proc and aged through the memcg they live in,
read from /proc/PID/cgroup (Documentation/admin-guide/cgroup-v2.rst,
"Processes"): MGLRU keeps generations per memcg, not per process, so a
process target ages and reports everything else charged to its memcg too.

Memcg ids are reused by the kernel, so id <-> path comes from the same lru_gen
read that the ids are used with, never from a cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from mglrud.config import Target, memcg_matches
from mglrud.fs import FS
from mglrud.model.lru_gen import GenHistogram


# A command line is matched on its first CMDLINE_MAX bytes only: the regex of a cmdline target
# runs on text any local user controls, and a search can be quadratic in its length.
CMDLINE_MAX = 4096


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    cmdline: str  # NUL separators shown as spaces; at most CMDLINE_MAX bytes of it
    cgroup: str | None  # cgroup v2 path; None on a cgroup v1-only host (no "0::" line)
    start: int | None = None  # start time (stat field 22): with the pid, which process this was when listed
    uid: int | None = None  # real uid (status "Uid:"); read only when a target requires one


@dataclass(frozen=True)
class Resolution:
    target: Target
    memcgs: tuple[str, ...]  # cgroup paths present in lru_gen
    problem: str = ""


def memcg_index(lruvecs: tuple[GenHistogram, ...]) -> dict[str, int]:
    """cgroup path -> memcg id.

    A dying memcg (removed, but still holding pages) keeps its path and stays
    in lru_gen beside a new cgroup of the same name. lru_gen walks siblings in
    creation order, so the later entry is the newer one: the live cgroup.

    Once offline, a dying memcg has also given its id back (mem_cgroup_id_remove()
    sets it to 0), and lru_gen lists it as "memcg 0 PATH": it can neither be aged
    (the kernel answers EINVAL to id 0) nor told apart from other dying memcgs, so
    it is left out. Id 0 is a real memcg only when memcg is disabled (then it is
    the only one, the root).
    """
    live = any(h.memcg_id for h in lruvecs)
    return {h.memcg_path: h.memcg_id for h in lruvecs if h.memcg_id or not live}


def proc_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup ("0::/path"), None on a v1-only system."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def status_uid(text: str) -> int | None:
    """The real uid from /proc/PID/status ("Uid:\treal effective saved fs")."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def _text(path) -> str:
    return path.read_bytes().decode("utf-8", "backslashreplace")


def read_proc(fs: FS, pid: int, cmdline: bool, uid: bool = False) -> Proc | None:
    """None when the process exited meanwhile or is not readable."""
    try:
        # any user can name a process (prctl(PR_SET_NAME)) or a delegated cgroup with bytes that
        # are not UTF-8: kept as \xNN (lru_gen.read_text() spells memcg paths the same way)
        comm = _text(fs.proc(pid, "comm")).rstrip("\n")
        cgroup = proc_cgroup(_text(fs.proc(pid, "cgroup")))
        cmd = ""
        if cmdline:
            with open(fs.proc(pid, "cmdline"), "rb") as f:
                cmd = f.read(CMDLINE_MAX).replace(b"\0", b" ").decode(errors="replace").strip()
        owner = status_uid(_text(fs.proc(pid, "status"))) if uid else None
    except OSError:  # exited meanwhile (ENOENT, ESRCH while torn down) or not readable
        return None
    return Proc(pid, comm, cmd, cgroup, start_time(fs, pid), owner)


def scan_procs(fs: FS, cmdline: bool, uid: bool = False) -> list[Proc]:
    """Every process, in pid order; `cmdline` reads command lines too (only cmdline targets need them),
    `uid` the owner (only targets that require a uid need it)."""
    try:
        pids = [int(p.name) for p in fs.proc().iterdir() if p.name.isdigit()]
    except OSError:
        return []
    return [p for p in (read_proc(fs, pid, cmdline, uid) for pid in sorted(pids)) if p is not None]


class ProcTable:
    """One cycle's look at /proc, shared by every source: scanned once, when first needed.

    A config of pid targets only never scans: those pids are read one by one.
    """

    def __init__(self, fs: FS, targets: tuple[Target, ...]):
        self.fs = fs
        self.cmdline = any(t.kind == "cmdline" for t in targets)
        self.uid = any(t.uid is not None for t in targets)
        self._all: list[Proc] | None = None
        self._pids: dict[int, Proc | None] = {}

    def all(self) -> list[Proc]:
        if self._all is None:
            self._all = scan_procs(self.fs, self.cmdline, self.uid)
        return self._all

    def of(self, t: Target) -> list[Proc]:
        """The processes target `t` selects now (for a memcg target: those in its cgroups)."""
        if t.kind == "pid" and self._all is None:
            if t.value not in self._pids:
                self._pids[t.value] = read_proc(self.fs, t.value, self.cmdline, self.uid)
            p = self._pids[t.value]
            return [p] if p is not None and selects(t, p) else []
        return [p for p in self.all() if selects(t, p)]


def nearest_memcg(path: str, index: dict[str, int]) -> str | None:
    """A cgroup without the memory controller is charged to its nearest ancestor that has it."""
    while True:
        if path in index:
            return path
        if path == "/":
            return None
        path = path.rsplit("/", 1)[0] or "/"


def selects(t: Target, p: Proc) -> bool:
    """Whether target `t` covers process `p`; a memcg target covers the processes in the
    cgroups it matches (a process of a cgroup v1-only host counts as in "/"). A target's
    `uid`/`cgroup` requirements must hold too: a comm or command line alone is no identity."""
    if t.uid is not None and p.uid != t.uid:
        return False
    if t.cgroup_pattern is not None and not memcg_matches(t.cgroup_pattern, p.cgroup or "/"):
        return False
    if t.kind == "memcg":
        return memcg_matches(t.pattern, p.cgroup or "/")
    if t.kind == "pid":
        return p.pid == t.value
    if t.kind == "comm":
        return p.comm == t.value
    if t.kind == "cmdline":
        return t.pattern.search(p.cmdline) is not None
    if t.kind == "unit":
        return p.cgroup is not None and t.value in p.cgroup.split("/")
    return False


# ---------------------------------------------------------------- the largest processes of a target

@dataclass(frozen=True)
class Candidate:
    pid: int
    comm: str
    rss_bytes: int
    start: int | None = None  # the process's start time when it was listed (Proc.start)


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


def stat_start(text: str) -> int | None:
    """Field 22 (starttime) of a /proc/PID/stat text; comm (field 2) is in parentheses and may contain ") "."""
    try:
        return int(text[text.rfind(")") + 2:].split()[19])
    except (IndexError, ValueError):
        return None


def start_time(fs: FS, pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, it tells a process from a later one with the same pid."""
    try:
        return stat_start(fs.proc(pid, "stat").read_text())
    except OSError:
        return None


def select(targets: Iterable[Target], fs: FS, exclude: Iterable[int] = (),
           page_size: int | None = None, procs: ProcTable | None = None) -> tuple[Selection, ...]:
    """Every target's processes, largest RSS first; mglrud itself (`exclude`) and kernel threads left out.
    `procs` is the cycle's shared /proc table (a fresh one when not given)."""
    targets = tuple(targets)
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    procs = procs or ProcTable(fs, targets)
    skip = set(exclude)
    rss: dict[int, int] = {}
    out = []
    for t in targets:
        chosen = []
        for p in procs.all():
            if p.pid not in skip and selects(t, p):
                if p.pid not in rss:
                    rss[p.pid] = read_rss(fs, p.pid, page_size)
                if rss[p.pid] > 0:
                    chosen.append(Candidate(p.pid, p.comm, rss[p.pid], p.start))
        chosen.sort(key=lambda c: (-c.rss_bytes, c.pid))
        problem = "" if chosen else f"no running process with {t.kind} {t.value}"
        out.append(Selection(t, tuple(chosen), problem))
    return tuple(out)


def missing_memcgs(targets: tuple[Target, ...], fs: FS) -> list[tuple[str, str]]:
    """(key, message) for each memcg target naming one literal cgroup that does not exist now.

    Only `mglrud check` treats these as config errors: the daemon must not refuse
    to start because a unit it watches starts after it (it logs them and reports
    the target with mglrud_target_memcgs 0 until the cgroup appears).
    """
    if not fs.cgroup("cgroup.controllers").exists():
        return []  # not a cgroup v2 mount: cannot tell
    out = []
    for i, t in enumerate(targets):
        if t.kind == "memcg" and not any(c in str(t.value) for c in "*?") and t.value != "/" \
                and not fs.cgroup(str(t.value).lstrip("/")).is_dir():
            out.append((f"targets[{i}].memcg", f"{t.value} does not exist under {fs.paths.cgroupfs}; a typo? "
                                               f"(a cgroup that appears later is picked up when it does)"))
    return out


def resolve(targets: tuple[Target, ...], lruvecs: tuple[GenHistogram, ...], fs: FS,
            procs: ProcTable | None = None, index: dict[str, int] | None = None) -> tuple[Resolution, ...]:
    """Every target's memcgs in this lru_gen read; `procs` is the cycle's shared /proc table,
    `index` memcg_index(lruvecs) when the caller has it already."""
    if index is None:
        index = memcg_index(lruvecs)
    procs = procs or ProcTable(fs, targets)
    out = []
    for t in targets:
        if t.kind == "memcg":
            found = tuple(path for path in index if memcg_matches(t.pattern, path))
            problem = "" if found else f"no memcg in lru_gen matches {t.value}"
        else:
            paths = [nearest_memcg(p.cgroup, index) for p in procs.of(t) if p.cgroup is not None]
            found = tuple(sorted({p for p in paths if p is not None}))
            problem = "" if found else f"no running process with {t.kind} {t.value}"
        out.append(Resolution(t, found, problem))
    return tuple(out)
