"""The one seam every write mglrud makes to the kernel passes through (issue 18).

mglrud writes four things to the kernel and nothing else:

- aging commands to debugfs lru_gen (`+ memcg_id node_id max_seq can_swap force_scan`,
  Documentation/admin-guide/mm/multigen_lru.rst), never an eviction (`- ...`): mglrud/fs.py's
  Writer, whichever writer it is (the file, a dry run, a test's recording);
- "1" to /proc/PID/clear_refs (Documentation/filesystems/proc.rst: clear the accessed bits),
  never 4 (soft-dirty) or 5 (peak RSS): mglrud/sources/procfs_io.py;
- "y" to /sys/kernel/mm/lru_gen/enabled, only with `lru_gen.enable: true` in the config and
  MGLRU off: mglrud/sources/lru_gen.py switch_on();
- updates and deletes of its own BPF program's map entries (bpf(2) BPF_MAP_UPDATE_ELEM and
  BPF_MAP_DELETE_ELEM, include/uapi/linux/bpf.h): mglrud/bpfsys.py.

Each calls `record()` right before its system call, with what it is about to write. The
daemon has no observer; the unit tests' audit (tests/unit/conftest.py) observes every write
of the session and holds it to the rule above, written out apart from the writers' own checks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

LRU_GEN, CLEAR_REFS, BPF_UPDATE, BPF_DELETE = "lru_gen", "clear_refs", "bpf_map_update", "bpf_map_delete"
LRU_GEN_ENABLED = "lru_gen_enabled"


class Write(NamedTuple):
    kind: str  # one of the five above
    target: str  # the file, or the map ("map fd N")
    data: bytes  # the command; "1"; the key (and value) of a map element


OBSERVERS: list[Callable[[Write], None]] = []


def record(kind: str, target: str, data: bytes) -> None:
    """Tell the observers of a write about to be made."""
    if OBSERVERS:
        w = Write(kind, str(target), bytes(data))
        for observe in OBSERVERS:
            observe(w)
