"""A reload that recompiles the BPF program does not stop the loop (issue 18, item 13).

Before: the reload compiled in-line, inside the daemon's loop, where the loader may wait up to
bpf_loader.TIMEOUT (far beyond WatchdogSec=2min): no cycle, no WATCHDOG=1 ping meanwhile, and
systemd killed a daemon that was only compiling. Now the compile is a background Build and the
old program serves until the new one is taken.

The real Daemon loop (signals, self-pipe, watchdog) and the real BPF source run here; the
loader is a stand-in whose reload compile waits until the test releases it, and the engine is
a thin one that runs the source's prepare()/cycle() per cycle. The test waits for positive
signals (cycles counted, pings sent, the new program in use), each with a deadline.
"""

import dataclasses
import os
import signal
import threading
import time
from types import SimpleNamespace

from mglrud import systemd
from mglrud.config import loads
from mglrud.daemon import Daemon
from mglrud.sources import bpf_hotness
from mglrud.sources.base import Probe
from tests.bpf_replay import CONFIG, DUMPS, META, ReplayProgram, fixture_proc

INDEX = {"/mglrud-capture": META["memcg_id"]}
PROBE = Probe("bpf", True, "")


class _Program(ReplayProgram):
    """Replays the dumps, then keeps answering the last one (the loop reads it many times)."""

    def __init__(self, cfg, fs):
        super().__init__(cfg, fs)
        self.cfg, self.closed, self.reads = cfg, False, 0

    def dump(self):
        self.reads += 1
        return DUMPS[min(self.reads - 1, len(DUMPS) - 1)]

    def close(self):
        self.closed = True


class SlowLoader:
    """The first start returns at once; every later one (the reload's compile) signals
    `entered` and then waits until the test sets `release`."""

    def __init__(self):
        self.programs: list[_Program] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, cfg, fs):
        if self.programs:
            self.entered.set()
            if not self.release.wait(60):
                raise bpf_hotness.Unavailable("test: the compile was never released")
        self.programs.append(_Program(cfg, fs))
        return self.programs[-1]


class _Engine:
    """The Engine's part that matters here: the BPF source configured on reload, read per cycle."""

    def __init__(self, cfg, src):
        self.cfg, self.src = cfg, src
        self.cycles = 0
        self.serving: list = []  # the program each cycle read from
        src.configure(cfg, PROBE, "")

    def configure(self, cfg):
        self.cfg = cfg
        self.src.configure(cfg, PROBE, "")

    def cycle(self, age=True, **_):
        self.src.prepare(self.cfg.targets, INDEX)
        data = self.src.cycle(self.cfg.targets, INDEX)
        self.serving.append((self.src.program, data))
        self.cycles += 1
        return SimpleNamespace(sources=(), targets=(), aging=SimpleNamespace(runs=0, errors=()))

    def due_in(self):
        return 0.0  # a cycle every time the loop wakes (its floor: 50 ms)


def _until(what, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return what()


def test_the_loop_cycles_and_pings_the_watchdog_while_a_reload_recompiles(tmp_path, monkeypatch):
    cfg = loads(CONFIG)
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=0))
    new = dataclasses.replace(cfg, bpf=dataclasses.replace(cfg.bpf, half_life=cfg.bpf.half_life * 2))
    assert new.bpf != cfg.bpf  # a change that recompiles
    loader = SlowLoader()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=loader)
    engine = _Engine(cfg, src)
    old = loader.programs[0]
    d = Daemon(cfg, lambda: new, engine=engine)
    pings: list[float] = []
    sent = systemd.notify

    def notify(*lines):
        if "WATCHDOG=1" in lines:
            pings.append(time.monotonic())
        return sent(*lines)

    monkeypatch.setattr(systemd, "notify", notify)
    d.watchdog = systemd.Watchdog(0.4)  # the loop wakes every 0.2 s, pings at most every 0.1 s
    seen: dict = {}

    def controller():
        try:
            seen["started"] = _until(lambda: engine.cycles >= 3 and len(pings) >= 2, 30)
            os.kill(os.getpid(), signal.SIGHUP)
            seen["entered"] = loader.entered.wait(30)
            cycles, pinged = engine.cycles, len(pings)
            # the positive signal: cycles and pings go on while the compile waits
            seen["during"] = _until(lambda: engine.cycles >= cycles + 5 and len(pings) >= pinged + 3, 10)
            seen["old_served"] = [p for p, _ in engine.serving[cycles:]]
            seen["old_up"] = src.status().up
        finally:
            loader.release.set()
            seen["after"] = _until(lambda: len(loader.programs) == 2 and engine.serving
                                   and engine.serving[-1][0] is loader.programs[-1], 30)
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=controller)
    t.start()
    try:
        assert d.run() == 0
    finally:
        loader.release.set()
        t.join(60)
    assert seen["started"] and seen["entered"], seen
    assert seen["during"], "the loop stopped cycling or pinging the watchdog while the program compiled"
    assert seen["old_served"] and all(p is old for p in seen["old_served"]), "the old program did not serve"
    assert seen["old_up"]
    assert seen["after"], "the new program was not taken after its compile"
    assert old.closed and src.cfg == new.bpf and d.config is new
    # the counters went on from the old program's (carry_over), never down
    matched = [data.matched for _, data in engine.serving if data is not None]
    assert matched == sorted(matched) and matched[-1] > matched[0]


def test_a_reload_back_while_compiling_abandons_the_build_and_closes_its_program(tmp_path):
    cfg = loads(CONFIG)
    new = dataclasses.replace(cfg, bpf=dataclasses.replace(cfg.bpf, half_life=cfg.bpf.half_life * 2))
    loader = SlowLoader()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=loader)
    src.configure(cfg, PROBE, "")
    old = loader.programs[0]
    src.configure(new, PROBE, "")  # starts compiling
    assert loader.entered.wait(30)
    build = src.build
    src.configure(cfg, PROBE, "")  # the next reload puts the old config back: nothing to compile
    assert src.build is None and src.program is old and src.status().up
    loader.release.set()
    assert build.done.wait(30)
    assert len(loader.programs) == 2 and loader.programs[1].closed  # abandoned: closed on arrival
    assert not src.poll() and src.program is old and not old.closed


def test_a_reload_whose_program_fails_closes_the_old_one_and_retries_the_new_config(tmp_path):
    cfg = loads(CONFIG)
    new = dataclasses.replace(cfg, bpf=dataclasses.replace(cfg.bpf, half_life=cfg.bpf.half_life * 2))
    programs = []

    def loader(c, fs):
        if programs:
            raise bpf_hotness.Unavailable("bcc could not compile or load hotness.bpf.c: boom")
        programs.append(_Program(c, fs))
        return programs[-1]

    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=loader)
    src.configure(cfg, PROBE, "")
    before = src.cycle(cfg.targets, INDEX)
    src.configure(new, PROBE, "")
    assert src.status().up  # the old program serves while the new one compiles
    assert src.build.done.wait(30) and src.poll()
    st = src.status()
    assert not st.up and "boom" in st.reason
    assert programs[0].closed and src.program is None  # not left attached, nor leaked
    assert src.cfg == new.bpf and 0 < src.due_in() <= bpf_hotness.RETRY_FIRST  # the new config, retried
    assert src.stats == (before.events, before.matched, before.dropped)  # nothing lost


class BlockingLoader(SlowLoader):
    """Every start, the first too, waits until the test releases it."""

    def __call__(self, cfg, fs):
        self.entered.set()
        if not self.release.wait(60):
            raise bpf_hotness.Unavailable("test: the compile was never released")
        self.programs.append(_Program(cfg, fs))
        return self.programs[-1]


def test_a_reload_that_turns_the_source_on_compiles_off_the_loop(tmp_path):
    """A source made by a reload (the Engine sets in_loop) starts as a Build: configure()
    returns while the compile waits, the source says it is compiling, and a later poll() takes
    the program. Before, its first start compiled in-line, inside the loop."""
    cfg = loads(CONFIG)
    loader = BlockingLoader()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=loader)
    src.in_loop = True
    returned = threading.Event()
    t = threading.Thread(target=lambda: (src.configure(cfg, PROBE, ""), returned.set()), daemon=True)
    t.start()
    try:
        assert loader.entered.wait(30), "the compile never began"
        # the positive signal: configure() came back while the loader still waits
        assert returned.wait(10), "configure() waited for the compile (in-line, in the loop)"
        assert src.program is None and "compiling" in src.reason
        assert not src.poll()  # nothing to take yet
    finally:
        loader.release.set()
    assert _until(src.poll, 30), "the finished compile was never taken"
    assert src.program is loader.programs[0] and src.status().up


def test_the_engine_marks_a_source_made_by_a_reload_in_loop(monkeypatch, tmp_path):
    """Sources made at the Engine's first configure start in-line (before the loop, under
    TimeoutStartSec); one a reload adds gets in_loop = True."""
    from mglrud import sources
    from mglrud.cycle import Engine
    from mglrud.fs import RecordingWriter
    from mglrud.sources.base import Entry, Part, Passive

    made = []

    class Slow(Passive):
        name = "slow"

        def __init__(self):
            self.in_loop = False
            made.append(self)

        def configure(self, config, probe, why):
            self.started_in_loop = self.in_loop

        def part(self, inputs):
            return Part()

    monkeypatch.setattr(sources, "TABLE", sources.TABLE + (
        Entry("slow", lambda fs: Probe("slow", True, "always"), lambda config, fs, clock, wall: Slow()),))
    paths = f"paths: {{debugfs: {tmp_path}, procfs: {tmp_path}, sysfs: {tmp_path}, tracefs: {tmp_path}}}\n"
    engine = Engine(loads("sources: [slow]\n" + paths), writer=RecordingWriter())
    assert [s.started_in_loop for s in made] == [False]
    engine.configure(loads("sources: [lru_gen]\n" + paths))  # a reload drops it ...
    engine.configure(loads("sources: [slow]\n" + paths))  # ... and another brings it back
    assert [s.started_in_loop for s in made] == [False, True]
