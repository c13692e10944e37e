"""A small, independent reader of /sys/kernel/debug/lru_gen for VM tests.

Deliberately separate from mglrud.sources.lru_gen: the tests check the kernel
with their own reading of its format (Documentation/admin-guide/mm/multigen_lru.rst).
"""

from pathlib import Path

LRU_GEN = Path("/sys/kernel/debug/lru_gen")


def read(text: str | None = None) -> dict[tuple[int, int], dict]:
    """{(memcg_id, node): {"path": str, "gens": [(seq, age_ms, anon_pages, file_pages), ...]}}"""
    text = LRU_GEN.read_text() if text is None else text
    out: dict[tuple[int, int], dict] = {}
    memcg, path, cur = None, None, None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "memcg":
            memcg, path = int(words[1]), (words[2] if len(words) > 2 else "")
        elif words[0] == "node":
            cur = out.setdefault((memcg, int(words[1])), {"path": path, "gens": []})
        elif cur is not None and words[0].isdigit() and len(words) >= 4:
            cur["gens"].append((int(words[0]), int(words[1]), int(words[2]), int(words[3])))
    return out


def memcg_id(cgroup_path: str) -> int:
    """The memcg id lru_gen shows for a cgroup path relative to the root ("/mglrud-test/hot")."""
    for (mid, _node), entry in read().items():
        # A removed memcg lingers with id 0 while it dies; it may share the path.
        if entry["path"] == cgroup_path and mid != 0:
            return mid
    raise LookupError(f"{cgroup_path} not in {LRU_GEN}")


def age(mid: int, node: int, can_swap: int = 1, force_scan: int = 1) -> None:
    max_seq = read()[(mid, node)]["gens"][-1][0]
    with open(LRU_GEN, "w") as f:
        f.write(f"+ {mid} {node} {max_seq} {can_swap} {force_scan}")
