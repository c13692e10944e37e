"""Sources: one module per kernel interface, each turning it into its part of the Snapshot.

The table below is every source mglrud knows, in the order `sources: auto`
prefers them and the Engine reads them. Adding a source is one module here
(implementing sources/base.py's Source protocol and a probe) and one line in
this table: README's "Adding a source" walks through it.

    lru_gen.py      /sys/kernel/debug/lru_gen: generations per memcg and node (and what the Engine ages through)
    bpf_hotness.py  bpf/hotness.bpf.c on mglrud's tracepoint: per-region heat of the aging walk
    procfs.py       /proc/PID/smaps + clear_refs: mapping heat on kernels without MGLRU
    smaps.py        the pure parsers of smaps and numa_maps the last two share
    selection.py    which of them run (`sources:`), from their probes
"""

from mglrud.sources import bpf_hotness, lru_gen, procfs
from mglrud.sources.base import Entry

TABLE: tuple[Entry, ...] = (
    Entry("bpf", bpf_hotness.probe, bpf_hotness.BpfHotnessSource.make, needs="lru_gen"),
    Entry("lru_gen", lru_gen.probe, lru_gen.LruGenSource.make),
    Entry("procfs", procfs.probe, procfs.ProcfsSource.make, instead_of="lru_gen",
          instead_why="clear_refs would clear the accessed bits its aging reads "
                      "(name it in sources: to run it anyway)"),
)


def names() -> tuple[str, ...]:
    return tuple(e.name for e in TABLE)
