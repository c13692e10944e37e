"""A reload that changes bpf: recompiles the program, whose maps start from zero; the
exported counters (events, matched, dropped, accessed bytes) must go on from where they were.

Found in the guest (tests/vm/test_bpf_faults.py): mglrud_bpf_dropped_events_total fell from
12376 to 0 after a reload with bigger regions.
"""
from collections import Counter

from mglrud.config import loads
from mglrud.sources import bpf_hotness
from mglrud.model import hotness as H
from tests.bpf_replay import CONFIG, DUMPS, META, ReplayProgram, fixture_proc


def _source(tmp_path, name):
    cfg = loads(CONFIG)
    return cfg, bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path / name), loader=ReplayProgram)


def _totals(data) -> dict[str, int]:
    return {t.name: sum(b for _, _, b in t.accessed_bytes_total) for t in data.targets}


def test_counters_carry_over_into_the_recompiled_program(tmp_path):
    cfg, old = _source(tmp_path, "old")
    old.start()
    for _ in DUMPS:
        before = old.cycle(cfg.targets, {"/mglrud-capture": META["memcg_id"]})
    assert before.matched > 0

    _, new = _source(tmp_path, "new")
    new.carry_over(old)
    new.start()  # a fresh program: its first read is dump 0 again, counts from zero
    after = new.cycle(cfg.targets, {"/mglrud-capture": META["memcg_id"]})
    first = H.raw_from_dump(DUMPS[0])
    assert (after.events, after.matched, after.dropped) == (
        before.events + first.events, before.matched + first.matched, before.dropped + first.dropped)
    grown = _totals(after)
    for name, total in _totals(before).items():
        assert grown[name] >= total, (name, total, grown[name])
    assert grown["w"] > _totals(before)["w"]  # dump 0 found the whole mapping accessed


def test_carry_over_copies_rather_than_shares(tmp_path):
    cfg, old = _source(tmp_path, "old")
    old.accessed = {"w": Counter({(0, "anon"): 4096})}
    _, new = _source(tmp_path, "new")
    new.carry_over(old)
    new.accessed["w"][(0, "anon")] += 1
    assert old.accessed["w"][(0, "anon")] == 4096
