"""A scrape renders one Snapshot, even when the loop publishes a new one in the middle of it.

The collectors once each read `published.current` on their own, so a scrape that
overlapped a publish could show the targets of one cycle beside the memcgs of the
next. The stand-in below publishes a new snapshot on every read of `current`.
"""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mglrud.collectors import Published, build_registry
from mglrud.model import AgingStats, Snapshot, SourceStatus, TargetState
from mglrud.model.lru_gen import GenHistogram, Generation


def snapshot(memcg: str, taken_at: float) -> Snapshot:
    gens = (Generation(1, 60.0, 10, 20), Generation(2, 0.5, 30, 40))
    return Snapshot(taken_at=taken_at, page_size=4096, cold_thresholds=(30.0,), idle_age_buckets=(30.0,),
                    lruvecs=(GenHistogram(7, memcg, 0, gens),),
                    targets=(TargetState("t", "memcg", memcg, (memcg,)),),
                    sources=(SourceStatus("lru_gen", True),), aging=AgingStats(errors=(("einval", 0),)))


class PublishedOnEveryRead(Published):
    """Every read of `current` finds the next snapshot published (the last one stays)."""

    def __init__(self, *snaps):
        super().__init__()
        self.snaps, self.reads = list(snaps), 0

    @property
    def current(self):
        snap = self.snaps[min(self.reads, len(self.snaps) - 1)]
        self.reads += 1
        return snap


def test_a_scrape_is_one_snapshot():
    pub = PublishedOnEveryRead(snapshot("/a", 1000.0), snapshot("/b", 1010.0), snapshot("/c", 1020.0),
                               snapshot("/d", 1030.0))
    text = generate_latest(build_registry(pub, wall=lambda: 1040.0)).decode()
    memcgs = {s.labels["memcg"] for f in text_string_to_metric_families(text) for s in f.samples
              if "memcg" in s.labels}
    age = [s.value for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "mglrud_snapshot_age_seconds"]
    assert len(memcgs) == 1, f"one scrape rendered the memcgs of several snapshots: {sorted(memcgs)}"
    # ... and it is the snapshot whose age the same scrape reports
    taken_at = {"/a": 1000.0, "/b": 1010.0, "/c": 1020.0, "/d": 1030.0}[memcgs.pop()]
    assert age == [1040.0 - taken_at]
    assert pub.reads == 1
