"""README's "Adding a source", done: a toy source registered through the same table the real ones use
(mglrud.sources.TABLE) runs in the Engine, is chosen by `sources: auto`, can be named in `sources:`,
and shows on /metrics -- with nothing changed in the Engine."""

from prometheus_client import generate_latest

from mglrud import sources
from mglrud.collectors import Published, build_registry
from mglrud.config import loads
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from mglrud.model import SourceStatus
from mglrud.sources.base import Entry, Part, Passive, Probe


class ToySource(Passive):
    """Counts its cycles; down while its probe says so."""

    name = "toy"

    def __init__(self):
        self.cycles, self.probe = 0, None

    @classmethod
    def make(cls, config, fs, clock, wall):
        return cls()

    def configure(self, config, probe, why):
        self.probe, self.why = probe, why

    def part(self, inputs):
        self.cycles += 1
        return Part((SourceStatus(self.name, self.probe.usable, "" if self.probe.usable else self.why),),
                    notes=(("source toy", ""),))


def probe(fs):
    return Probe("toy", True, "a toy that is always there")


def register(monkeypatch):
    monkeypatch.setattr(sources, "TABLE", sources.TABLE + (Entry("toy", probe, ToySource.make),))


def test_a_registered_source_runs_in_the_engine_and_shows_on_metrics(monkeypatch, tmp_path):
    register(monkeypatch)
    cfg = loads(f"paths: {{debugfs: {tmp_path}, procfs: {tmp_path}, sysfs: {tmp_path}, tracefs: {tmp_path}}}\n")
    engine = Engine(cfg, writer=RecordingWriter())
    assert engine.choice.reason("toy") == "used: a toy that is always there"
    snap = engine.cycle(age=False)
    engine.cycle()
    assert engine.sources["toy"].cycles == 2
    assert ("toy", True) in [(s.name, s.up) for s in snap.sources]
    text = generate_latest(build_registry(Published(snap))).decode()
    assert 'mglrud_source_up{source="toy"} 1.0' in text


def test_a_registered_source_can_be_named_in_the_config(monkeypatch, tmp_path):
    register(monkeypatch)
    cfg = loads(f"sources: [toy]\npaths: {{debugfs: {tmp_path}, procfs: {tmp_path}}}\n")
    engine = Engine(cfg, writer=RecordingWriter())
    assert engine.choice.active == ("toy",)
    assert [s.name for s in engine.cycle().sources] == ["lru_gen", "toy"]
