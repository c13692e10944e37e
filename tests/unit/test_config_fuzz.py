"""Fuzzing the config loader with Hypothesis (issue 18): whatever the text, `loads` returns a
Config or raises ConfigError whose message is one printable line of bounded length, within a
timeout per case (CASE_TIMEOUT: a hang fails; the loader's speed is not asserted -- Hypothesis's
own 2 s deadline failed a 1 ms case that a loaded machine delayed to 5.7 s), without a traceback
of any other kind.

Cases are seeded (the same run every time). `make test` runs MGLRUD_FUZZ_EXAMPLES (default 300);
the full run is MGLRUD_FUZZ_EXAMPLES=10000 (README, Reliability, has its time).
"""

import math
import os
import signal
import tempfile
import time
import tracemalloc

import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches Unicode tables in its home directory (./.hypothesis by default): not in the checkout.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mglrud-hypothesis"))

from mglrud.config import SELECTORS, TOP_KEYS, ConfigError, from_dict, loads

EXAMPLES = int(os.environ.get("MGLRUD_FUZZ_EXAMPLES", "300"))
CASE_TIMEOUT = 60.0  # seconds for one case: far beyond any load, a bound on a hang


class Hang(Exception):
    pass


def _hang(signum, frame):
    raise Hang(f"one case ran past {CASE_TIMEOUT:g} s")

KEYS = list(TOP_KEYS) + list(SELECTORS) + [
    "address", "port", "interval", "can_swap", "force_scan", "dry_run", "cold_thresholds", "idle_age_buckets",
    "name", "procfs", "sysfs", "debugfs", "cgroupfs", "tracefs", "level", "max_processes", "top_mappings",
    "clear_refs", "region_size", "half_life", "heat_buckets", "max_regions", "program"]
WEIRD = ["\x00", "\n", "\r", "\t", "\x1b", "\u202e", "\u2028", "\ufeff", "\x7f", "\x85"]
SCALARS = ["30s", "1m", "0.000001ms", "-1s", "0s", "168h", "999999h", "2M", "4096", "1G", "9" * 60, "0x" + "f" * 60,
           "1_000", "0o17", "1:30", ".inf", "-.inf", ".nan", "~", "null", "true", "no", "/**", "/a/../b", "/a",
           "fe80::1%lo", "224.0.0.1", "255.255.255.255", "::1", "127.0.0.1", "auto", "bpf", "lru_gen", "procfs",
           "a.service", "(", "*x", "[0-", "debug", "/x.bpf.c", "''", '""', "!!python/object/apply:os.system ['x']",
           "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]", "2001-12-14t21:59:43.10-05:00"]
TOKENS = KEYS + SCALARS + WEIRD + [
    ":", ": ", "- ", "-", "[", "]", "{", "}", ", ", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "\n", "\n  ", "\n    ",
    "#", "'", '"', "|", ">", "---", "...", "%YAML 1.1", "!!str ", "!!int ", "!!map ", "!!seq ", "!foo "]


def _scalars():
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10 ** 50), max_value=10 ** 50),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SCALARS), st.text(max_size=20),
        st.text(alphabet=st.sampled_from(list("ab/*?.:-_ 0123456789") + WEIRD), max_size=20))


def _documents():
    """Python values shaped like a config: known keys, any values."""
    values = st.recursive(_scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), _scalars()).filter(lambda k: k is None or not isinstance(
            k, float) or not math.isnan(k)), inner, max_size=5)), max_leaves=30)
    return st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


def _dumped(doc) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return repr(doc)


CASES = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=400)),
    st.tuples(st.just("text"), st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)),
    st.tuples(st.just("text"), _documents().map(_dumped)),
    st.tuples(st.just("doc"), _documents()),
)


def _check_error(e: ConfigError) -> None:
    line = str(e)
    assert line.isprintable(), repr(line)
    assert len(line) < 700, len(line)


PEAKS: list[tuple[int, str]] = []  # (bytes the loader allocated at its peak, the case), per case


@seed(18)
@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(CASES)
def _fuzz(case):
    """loads() or from_dict() of one case: a Config, or one clean line of ConfigError."""
    kind, value = case
    tracemalloc.start()  # only around the loader: tracing Hypothesis too would triple the run's time
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT)  # SIGALRM: Hang, in this (the main) thread
    try:
        if kind == "text":
            loads(value, "fuzz.yaml")
        else:
            from_dict(value, "fuzz.yaml")
    except ConfigError as e:
        _check_error(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    PEAKS.append((peak, repr(case)[:120]))


def test_the_loader_returns_a_config_or_one_clean_line():
    """EXAMPLES seeded cases, each within CASE_TIMEOUT and 32 MiB of Python memory at its peak.

    Memory is what the loader itself allocates during a case (tracemalloc's peak, traced only
    around the call):
    the process's RSS grows with Hypothesis's own records of the cases (~45 KiB a case, the same
    with the loader call taken out), which says nothing about the loader."""
    PEAKS.clear()
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _hang)
    try:
        _fuzz()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    worst, case = max(PEAKS)
    print(f"{len(PEAKS)} cases in {time.monotonic() - started:.1f} s; the loader's largest peak "
          f"{worst / 1024:.0f} KiB ({case})")
    assert len(PEAKS) >= min(EXAMPLES, 100)
    assert worst < 32 << 20, f"{worst >> 20} MiB for {case}"
