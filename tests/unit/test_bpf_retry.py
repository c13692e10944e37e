"""The BPF source comes back after its program fails (issue 18 item 11).

Before: any exception reading the maps closed the source until mglrud restarted, not even a
SIGHUP started it again, and a program that failed to load stayed down. Now a failed program is
started again with a growing backoff, at once on a reload, and its counters carry on.

A start after the first compiles off the loop (bpf_hotness.Build, item 13): `_settle` waits for
that build to finish and has the source take it, as the loop's next cycle would.
"""
import errno

import pytest

from mglrud.config import loads
from mglrud.sources import bpf_hotness
from mglrud.sources.base import Probe
from tests.bpf_replay import CONFIG, META, ReplayProgram, fixture_proc

RETRY = getattr(bpf_hotness, "RETRY_FIRST", 30.0)
INDEX = {"/mglrud-capture": META["memcg_id"]}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Script:
    """A loader whose programs fail as scripted: `plan` is one entry per start, each
    "load" (Unavailable), "read" (the first dump raises EIO), "bug" (dump raises TypeError) or "ok"."""

    def __init__(self, *plan):
        self.plan, self.started = list(plan), 0

    def __call__(self, cfg, fs):
        self.started += 1
        what = self.plan.pop(0) if self.plan else "ok"
        if what == "load":
            raise bpf_hotness.Unavailable("bcc could not compile or load hotness.bpf.c: boom")
        prog = ReplayProgram(cfg, fs)
        if what in ("read", "bug"):
            def dump():
                if what == "bug":
                    raise TypeError("a bug in mglrud")
                raise OSError(errno.EIO, "Input/output error")
            prog.dump = dump
        return prog


def _settle(src) -> None:
    """Wait for the background build, then take it (what the loop's next prepare() does)."""
    assert src.build is not None, "no start in progress"
    assert src.build.done.wait(30), "the build did not finish"
    assert src.poll()


def _source(tmp_path, loader):
    cfg = loads(CONFIG)
    clock = Clock()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=loader)
    src.clock = clock  # (an attribute, so that the same test ran against the code before the retry)
    return cfg, src, clock


def test_a_program_that_failed_to_load_is_started_again_with_a_growing_backoff(tmp_path):
    loader = Script("load", "load", "ok")
    cfg, src, clock = _source(tmp_path, loader)
    assert not src.start() and "boom" in src.status().reason
    assert src.due_in() == RETRY
    clock.t += RETRY - 1
    assert src.cycle(cfg.targets, INDEX) is None and loader.started == 1  # not yet
    clock.t += 1
    assert src.cycle(cfg.targets, INDEX) is None  # starts it again, off the loop
    _settle(src)
    assert loader.started == 2 and not src.status().up  # tried, failed again
    assert src.due_in() == 2 * RETRY  # twice as long
    clock.t += 2 * RETRY
    assert src.cycle(cfg.targets, INDEX) is None
    _settle(src)
    data = src.cycle(cfg.targets, INDEX)
    assert loader.started == 3 and src.status().up and data is not None and data.matched > 0
    assert src.due_in() == float("inf")


def test_a_program_whose_maps_fail_comes_back_and_its_counters_go_on(tmp_path):
    loader = Script("ok", "read", "ok")
    cfg, src, clock = _source(tmp_path, loader)
    assert src.start()
    before = src.cycle(cfg.targets, INDEX)
    src.program.dump = Script("read")(cfg, None).dump  # the kernel side goes away
    assert src.cycle(cfg.targets, INDEX) is None
    st = src.status()
    assert not st.up and "reading the BPF maps failed" in st.reason and "Input/output error" in st.reason
    clock.t += RETRY
    assert src.cycle(cfg.targets, INDEX) is None
    _settle(src)
    assert src.cycle(cfg.targets, INDEX) is None and loader.started == 2  # "read": fails on its first read
    clock.t += 2 * RETRY
    assert src.cycle(cfg.targets, INDEX) is None
    _settle(src)
    after = src.cycle(cfg.targets, INDEX)
    assert loader.started == 3 and src.status().up and src.restarts == 2
    # the new program's maps start from zero (dump 0 again): its counts add to the old ones
    assert after.events > before.events and after.matched > before.matched


def test_a_reload_starts_a_failed_program_at_once(tmp_path):
    loader = Script("load", "ok")
    cfg, src, clock = _source(tmp_path, loader)
    probe = Probe("bpf", True, "")
    src.configure(cfg, probe, "")  # first start: fails
    assert not src.status().up and loader.started == 1
    src.configure(cfg, probe, "")  # SIGHUP with the same config
    _settle(src)
    assert loader.started == 2 and src.status().up


def test_a_bug_is_not_taken_for_a_kernel_fault(tmp_path):
    cfg, src, _ = _source(tmp_path, Script("bug"))
    assert src.start()
    with pytest.raises(TypeError):
        src.cycle(cfg.targets, INDEX)
