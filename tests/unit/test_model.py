"""model/lru_gen.py: cold bytes and the idle-age histogram from generations (the lower-bound rule)."""

import math

from mglrud.model.lru_gen import GenHistogram, Generation, cold_pages, idle_histogram, idle_lower_bounds

# Four generations, oldest first, as after regular aging every ~2 s.
H = GenHistogram(5, "/m", 0, (
    Generation(10, 7.0, 1000, 1),   # idle >= age of gen 11 = 5 s
    Generation(11, 5.0, 100, 2),    # idle >= 3 s
    Generation(12, 3.0, 10, 4),     # idle >= 1 s
    Generation(13, 1.0, 1, 8),      # youngest: idle >= 0
))


def test_idle_lower_bound_is_next_younger_generations_age():
    assert idle_lower_bounds(H) == (5.0, 3.0, 1.0, 0.0)


def test_cold_pages_per_threshold():
    assert [cold_pages(H, "anon", t) for t in (0.5, 1, 2, 3, 5, 6)] == [1110, 1110, 1100, 1100, 1000, 0]
    assert cold_pages(H, "file", 3) == 3


def test_youngest_generation_is_never_cold():
    one = GenHistogram(1, "/", 0, (Generation(3, 100.0, 50, 50),))
    assert cold_pages(one, "anon", 0.001) == 0


def test_idle_histogram_is_cumulative_and_ends_with_inf():
    buckets, page_seconds = idle_histogram(H, "anon", (1.0, 2.0, 4.0))
    assert buckets == [(1.0, 11), (2.0, 11), (4.0, 111), (math.inf, 1111)]
    assert page_seconds == 1000 * 5 + 100 * 3 + 10 * 1


def test_cold_and_histogram_agree():
    """cold(T) + histogram bucket just below T = everything (no gaps, no double counting)."""
    buckets, _ = idle_histogram(H, "anon", (0.5, 2.0, 4.0))
    total = buckets[-1][1]
    assert cold_pages(H, "anon", 4.5) + dict(buckets)[4.0] == total
