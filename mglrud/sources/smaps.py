"""Pure parsers of /proc/PID/smaps and /proc/PID/numa_maps (Documentation/filesystems/proc.rst).

Shared by the /proc source (sources/procfs.py), the BPF source's residency read
(sources/bpf_hotness.py) and `mglrud report` (mapping names); the code that
prints them is fs/proc/task_mmu.c.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Mappings whose pages live on the anon LRU although smaps counts them outside `Anonymous`:
# shared anonymous memory (/dev/zero), memfd, SysV and POSIX shared memory are shmem,
# which is swap-backed (mm/shmem.c), so reclaim treats it as anon.
_SHMEM_PREFIXES = ("/dev/zero", "/memfd:", "/SYSV", "/dev/shm/", "[anon_shmem:")

_HEADER = re.compile(r"([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][psS]) ([0-9a-f]+) (\S+) (\d+)(?: +(.*))?")
_FIELD = re.compile(r"(\w+): +(\d+) kB")


class ParseError(ValueError):
    pass


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
