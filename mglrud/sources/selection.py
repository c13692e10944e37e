"""Which sources run: BPF + lru_gen, else lru_gen alone, else /proc -- automatic, overridable.

`sources: auto` (the default) probes the kernel at start and on reload (and,
while lru_gen is not usable, every cycle, so that it takes over once debugfs is
mounted), and runs every usable source of the table in sources/__init__.py
that its `needs` and `instead_of` allow: lru_gen when debugfs lru_gen can be
read (CONFIG_LRU_GEN, debugfs mounted, root); the BPF source beside it when
mglrud's tracepoint and bcc are there; the /proc source only when lru_gen
cannot be used, because clear_refs clears the same accessed bits MGLRU's aging
walks look at. `sources: [lru_gen, procfs]` names them explicitly: each named
source then runs (and reports itself down with a reason while it cannot), and
no other does.

`choose()` is pure; each source module's probe() looks at the machine through the FS seam.
"""

from __future__ import annotations

from dataclasses import dataclass

from mglrud.fs import FS
from mglrud.sources.base import Entry, Probe

AUTO = "auto"
__all__ = ["AUTO", "Choice", "Probe", "choose", "probe_all", "reprobe"]


def _table(table):
    if table is None:
        from mglrud import sources  # the package's table, looked up when called (tests register sources)

        table = sources.TABLE
    return table


def __getattr__(name):  # SOURCES: the names of the table, in its order
    if name == "SOURCES":
        return tuple(e.name for e in _table(None))
    raise AttributeError(name)


@dataclass(frozen=True)
class Choice:
    active: tuple[str, ...]  # in table order
    why: tuple[tuple[str, str], ...]  # (source, why it is or is not used), every source listed

    def reason(self, name: str) -> str:
        return dict(self.why)[name]


def probe_all(fs: FS, table: tuple[Entry, ...] | None = None) -> dict[str, Probe]:
    return {e.name: e.probe(fs) for e in _table(table)}


def choose(requested: str | tuple[str, ...], probes: dict[str, Probe],
           table: tuple[Entry, ...] | None = None) -> Choice:
    table = _table(table)
    if requested != AUTO:
        why = []
        for e in table:
            p = probes[e.name]
            if e.name not in requested:
                why.append((e.name, "not in the configured sources"))
            elif p.usable:
                why.append((e.name, f"configured; {p.detail}"))
            else:
                why.append((e.name, f"configured, but cannot run: {p.detail}"))
        return Choice(tuple(e.name for e in table if e.name in requested), tuple(why))

    active, why = [], []
    for e in table:
        p = probes[e.name]
        if e.needs and not probes[e.needs].usable:
            why.append((e.name, f"not used: it needs {e.needs}; {p.detail}"))
        elif e.instead_of and probes[e.instead_of].usable:
            why.append((e.name, f"not used: {e.instead_of} is usable, and {e.instead_why}"))
        elif not p.usable:
            why.append((e.name, f"not used: {p.detail}"))
        else:
            active.append(e.name)
            why.append((e.name, f"used beside {e.needs}: {p.detail}" if e.needs else
                        f"used because {e.instead_of} is not: {p.detail}" if e.instead_of else f"used: {p.detail}"))
    return Choice(tuple(active), tuple(why))


def reprobe(requested: str | tuple[str, ...], choice: Choice, table: tuple[Entry, ...] | None = None) -> bool:
    """Whether `auto` should probe again this cycle: while a source that others need or stand in
    for is not running (lru_gen: debugfs may be mounted later, and it then takes over)."""
    if requested != AUTO:
        return False
    table = _table(table)
    pivotal = {e.needs for e in table if e.needs} | {e.instead_of for e in table if e.instead_of}
    return any(name not in choice.active for name in pivotal)
