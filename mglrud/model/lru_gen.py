"""The lru_gen source's data (sources/lru_gen.py): generation histograms, and the pure maths on them.

The functions at the bottom derive cold bytes and idle-age histograms from
generations; they are pure so the metrics, the JSON endpoint and `mglrud
snapshot` agree.

What a generation says about idleness (Documentation/admin-guide/mm/multigen_lru.rst,
"Working set estimation"): aging creates a new youngest generation and its
page-table walk moves every page found accessed into it. A page still in
generation `s` was therefore not seen accessed when generation `s+1` was
created, so its idle time is at least the age of generation `s+1`. mglrud uses
that lower bound; it errs by at most one aging interval, because accesses after
the latest aging are not seen until the next one. The youngest generation's
lower bound is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mglrud.model.histogram import cumulative

LRUS = ("anon", "file")


class Generation(NamedTuple):
    """Immutable like the dataclasses around it; a NamedTuple because lru_gen is parsed every
    cycle and thousands of memcgs make tens of thousands of these (a third of the cost of a
    frozen dataclass to build)."""

    seq: int  # the kernel's sequence number; grows without bound
    age_seconds: float  # time since this generation was created
    anon_pages: int
    file_pages: int

    def pages(self, lru: str) -> int:
        return self.anon_pages if lru == "anon" else self.file_pages


@dataclass(frozen=True, slots=True)
class GenHistogram:
    """One lruvec (a memcg on a node) as /sys/kernel/debug/lru_gen shows it, oldest first.
    Slotted: every cycle makes and frees one per memcg and node (6,000 at 3,000 memcgs on
    two nodes), and an instance dict was a third of each one's memory and of its cost."""

    memcg_id: int
    memcg_path: str
    node: int
    generations: tuple[Generation, ...]

    @property
    def max_seq(self) -> int:
        return self.generations[-1].seq

    def pages(self, lru: str) -> int:
        return sum(g.pages(lru) for g in self.generations)


# ---------------------------------------------------------------- derived values

def idle_lower_bounds(h: GenHistogram) -> tuple[float, ...]:
    """Per generation (oldest first): the least time its pages have gone unaccessed."""
    ages = [g.age_seconds for g in h.generations]
    return tuple(ages[1:]) + (0.0,)


def cold_pages(h: GenHistogram, lru: str, threshold: float) -> int:
    """Pages idle at least `threshold` seconds, by the lower bound above."""
    return sum(g.pages(lru) for g, idle in zip(h.generations, idle_lower_bounds(h)) if idle >= threshold)


def idle_histogram(h: GenHistogram, lru: str, edges: tuple[float, ...]) -> tuple[list[tuple[float, int]], float]:
    """Cumulative pages per bucket edge (`le`, ending with +Inf) and the sum of page-seconds."""
    return cumulative(((i, g.pages(lru)) for g, i in zip(h.generations, idle_lower_bounds(h))), edges)
