"""A small churn run (bench/churn.py, 150 instead of 1000 cycles): targets come and go while mglrud
ages and is scraped; it stays up, answers every scrape, does not grow, and one interval after
the last target went no series of it is left."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import churn  # noqa: E402

CYCLES = 150


@pytest.mark.parametrize("mode", ["lru_gen", "procfs"])
def test_churn(mode):
    r = churn.churn_lru_gen(CYCLES) if mode == "lru_gen" else churn.churn_procfs(CYCLES, concurrency=20)
    print(churn.report([r], f"tests/integration/test_churn.py ({mode})"))
    assert r.alive
    assert r.scrape_errors == 0 and r.scrapes > 0
    assert r.max_churn_series > 0, "the churning targets were seen at all"
    assert not r.stale_after_gone, r.stale_after_gone[:5]
    assert r.growth_kib <= 5 * 1024
