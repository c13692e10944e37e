"""model/heat_columns.py (the BPF source's per-cell state as numpy columns) against the reference,
model/hotness.py's step() on one object per cell: the same state, float for float, over reads
that grow, keep, lose and re-create cells, and beyond HISTORY finds."""

import random

import pytest

from mglrud.model import heat_columns as C  # numpy: scripts/install-deps installs it
from mglrud.model import hotness as H


def _reads(seed: int, n: int = 40):
    rnd = random.Random(seed)
    keys = [H.CellKey(100 + rnd.randrange(4), rnd.choice((5, 9)), 0x7f000 + rnd.randrange(30), rnd.randrange(2),
                      rnd.choice(H.LRU_NAMES)) for _ in range(200)]
    keys = list(dict.fromkeys(keys))
    counts: dict = {}
    now = 10**12
    for _ in range(n):
        now += rnd.choice((10**9, 2 * 10**9, 1234567891))
        for k in keys:
            r = rnd.random()
            if r < 0.3:
                p, _, t = counts.get(k, (0, 0, 0))
                counts[k] = (p + rnd.randrange(1, 500), 0, now - rnd.randrange(10**9))
            elif r < 0.33:
                counts.pop(k, None)  # deleted from the map
            elif r < 0.34 and k in counts:
                counts[k] = (1, 0, now - 3)  # deleted and re-created: a count lower than before
        order = list(counts)
        rnd.shuffle(order)  # a hash map's order changes between reads
        yield H.RawRead(now, {k: H.Counts(*counts[k]) for k in order}, 0, 0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_step_equals_the_per_cell_step(seed):
    ref, cols = {}, C.State.empty()
    for raw in _reads(seed):
        ref = H.step(ref, raw, 30.0)
        cols = C.step(cols, C.Cells.from_dict(raw.cells), raw.mono_ns, 30.0)
        got = cols.as_dict()
        assert list(got) == list(ref)  # the read's order
        assert got == ref  # every field, floats bit for bit
    assert max(len(s.history) for s in ref.values()) == H.HISTORY  # the history wrapped


def test_a_restart_forgets_counts_and_keeps_pass_tagged_finds():
    k = H.CellKey(1, 5, 7, 0, "anon")
    cols = C.step(C.State.empty(), C.Cells.from_dict({k: H.Counts(10, 0, 5)}), 100, 30.0)
    cols = C.tag_finds(cols, {5: H.AgingPass(5, 42, 1.0, True)})
    assert cols.found_in_dict() == {k: ((42, 10),)}
    cols = C.step(cols.forget_counts(), C.Cells.from_dict({k: H.Counts(3, 0, 9)}), 200, 30.0)
    assert cols.as_dict() == H.step({}, H.RawRead(200, {k: H.Counts(3, 0, 9)}, 0, 0, 0), 30.0)
    assert cols.found_in_dict() == {k: ((42, 10),)}


def test_match_gives_each_repeated_key_the_same_row():
    import numpy as np

    a_region, a_word = np.array([3, 1, 2], np.uint64), np.array([7, 7, 7], np.uint64)
    b_region, b_word = np.array([2, 2, 9, 3], np.uint64), np.array([7, 7, 7, 8], np.uint64)
    assert C.match(a_region, a_word, b_region, b_word).tolist() == [2, 2, -1, -1]
