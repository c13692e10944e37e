"""The /proc source inside the daemon's cycle: chosen when lru_gen is missing, read on schedule, in the Snapshot."""

import shutil

from conftest import FIXTURES
from mglrud import snapshot_json as report
from mglrud.render.snapshot_table import to_table
from mglrud.collectors import Published, build_registry
from mglrud.config import loads
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from prometheus_client import generate_latest
from test_procfs_parse import PID, SMAPS, SMAPS_FIRST, Clock, fake_proc


def engine(tmp_path, yaml=""):
    root = fake_proc(tmp_path, SMAPS_FIRST)
    (root / "self").mkdir()
    shutil.copy(FIXTURES / "procfs/pid/smaps", root / "self/smaps")  # what the probe looks at
    (root / "self/clear_refs").write_text("")
    cfg = loads(yaml + f"\npaths: {{procfs: {root}, sysfs: {tmp_path}/sys, debugfs: {tmp_path}/debugfs, "
                       f"tracefs: {tmp_path}/tracing}}\n")
    clock = Clock()
    return Engine(cfg, writer=RecordingWriter(), clock=clock, wall=lambda: 1.7e9 + clock.t), clock, root


def test_without_lru_gen_auto_runs_procfs(tmp_path):
    # clear_refs on, explicitly: this test follows an accessed-bytes interval (the default is off)
    eng, clock, root = engine(tmp_path, "aging: {interval: 1m}\nprocfs: {clear_refs: true}")
    assert eng.choice.active == ("procfs",)
    snap = eng.cycle(age=False)  # the daemon's first cycle: read, do not clear
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert [(s.name, s.up) for s in snap.sources] == [("lru_gen", False), ("procfs", True)]
    assert "CONFIG_LRU_GEN" in snap.sources[0].reason
    assert snap.procfs.targets[0].name == "all" and snap.procfs.targets[0].pids == (PID,)
    assert snap.aging.runs == 0 and dict(snap.aging.errors)["no_debugfs"] == 0

    eng.cycle()  # starts the interval
    assert (root / str(PID) / "clear_refs").read_text() == "1"
    assert eng.due_in() == 60
    (root / str(PID) / "smaps").write_text(SMAPS)
    clock.t += 60
    snap = eng.cycle()
    [p] = snap.procfs.processes
    assert p.interval_seconds == 60
    text = generate_latest(build_registry(Published(snap), wall=lambda: 1.7e9 + clock.t)).decode()
    assert 'mglrud_source_up{source="procfs"} 1.0' in text
    assert 'mglrud_source_chosen{source="procfs"} 1.0' in text and 'mglrud_source_chosen{source="lru_gen"} 0.0' in text
    assert 'mglrud_mapping_accessed_bytes{comm="python3",mapping="[anon]",target="all"}' in text
    doc = report.to_dict(snap)
    assert doc["procfs"]["processes"][0]["pid"] == PID
    assert "/memfd:mglrud-test" in to_table(snap)


def test_named_sources_only(tmp_path):
    eng, _, root = engine(tmp_path, "sources: [lru_gen]")
    snap = eng.cycle()
    assert snap.procfs is None
    assert [(s.name, s.up) for s in snap.sources] == [("lru_gen", False)]
    assert (root / str(PID) / "clear_refs").read_text() == ""


def test_procfs_settings_reach_the_source(tmp_path):
    eng, _, root = engine(tmp_path, "procfs: {top_mappings: 2, clear_refs: false}")
    snap = eng.cycle()
    assert snap.procfs.top_mappings == 2
    assert (root / str(PID) / "clear_refs").read_text() == ""


def test_snapshot_exit_status_follows_the_chosen_sources(tmp_path, capsys):
    from mglrud import cli
    _, _, root = engine(tmp_path)
    flags = [f"--path.procfs={root}", f"--path.sysfs={tmp_path}/sys", f"--path.debugfs={tmp_path}/debugfs",
             f"--path.tracefs={tmp_path}/tracing"]
    assert cli.main(["snapshot", "--no-age"] + flags) == 0  # procfs chosen and up; lru_gen not used
    out = capsys.readouterr().out
    assert out.startswith("TARGET") and "/memfd:mglrud-test" in out
    cfg = tmp_path / "lru_gen_only.yaml"
    cfg.write_text("sources: [lru_gen]\n")
    assert cli.main(["snapshot", "--no-age", "-c", str(cfg)] + flags) == 1  # named, and down


def test_default_config_never_writes_clear_refs_and_says_so(tmp_path):
    """Issue 15 item 5: the built-in default reads /proc only; /metrics has resident bytes,
    no accessed bytes, and /snapshot.json says accessed bytes need procfs.clear_refs: true."""
    eng, clock, root = engine(tmp_path, "aging: {interval: 1m}")
    assert eng.config.procfs.clear_refs is False
    for _ in range(3):
        snap = eng.cycle()
        clock.t += 60
    assert (root / str(PID) / "clear_refs").read_text() == ""
    text = generate_latest(build_registry(Published(snap), wall=lambda: 1.7e9 + clock.t)).decode()
    assert 'mglrud_mapping_resident_bytes{comm="python3",lru="anon",mapping="[anon]",numa_node="0",target="all"}' in text
    assert "\nmglrud_mapping_accessed_bytes{" not in text and "\nmglrud_mapping_cold_bytes{" not in text
    from mglrud.render.snapshot_table import procfs_rows
    rows = procfs_rows(snap.procfs, snap.cold_thresholds)[1:]
    assert rows and all(r[4:] == ("-",) * 5 for r in rows)  # accessed, idle, cold: unknown, not 0B
    doc = report.to_dict(snap)["procfs"]
    assert doc["clear_refs"] is False and "procfs.clear_refs" in doc["accessed"]
