"""Config: defaults, the example file, and malformed configs -> one line naming the key, exit 2."""

import subprocess
import sys

import pytest

from conftest import REPO
from mglrud import cli
from mglrud.config import ConfigError, format_duration, load, loads, memcg_glob, memcg_matches, parse_duration

# (yaml text, the exact stderr line)
MALFORMED = [
    ("listen: {port: 70000}\n",
     "mglrud: config: listen.port: must be an integer from 1 to 65535, got 70000"),
    ("listen: {address: localhost}\n",
     "mglrud: config: listen.address: must be an IP address like 127.0.0.1 or ::1, got 'localhost'"),
    ("listen: {adress: 127.0.0.1}\n",
     "mglrud: config: listen.adress: unknown key; known keys here: address, port, socket"),
    ("colour: blue\n",
     "mglrud: config: colour: unknown key; known keys here: listen, aging, snapshot, metrics, targets, paths, log, "
     "sources, procfs, bpf, lru_gen, web_config_file"),
    ("aging: {interval: 30}\n",
     "mglrud: config: aging.interval: must be a duration with a unit like 30s, 5m or 1h, got 30"),
    ("aging: {interval: 5x}\n",
     "mglrud: config: aging.interval: must be a duration with a unit like 30s, 5m or 1h, got '5x'"),
    ("aging: {interval: 0s}\n",
     "mglrud: config: aging.interval: must be longer than zero, got '0s'"),
    ("aging: {can_swap: 1}\n",
     "mglrud: config: aging.can_swap: must be true or false, got 1"),
    ("metrics: {cold_thresholds: [1m, 10m]}\n",
     "mglrud: config: metrics.cold_thresholds[1]: 10m can never be reached: with 4 generations aged every 1m, "
     "no page is seen idle longer than 3m; raise aging.interval or lower this threshold"),
    ("metrics: {cold_thresholds: [30s, 30s]}\n",
     "mglrud: config: metrics.cold_thresholds[1]: 30s is listed twice"),
    ("metrics: {cold_thresholds: []}\n",
     "mglrud: config: metrics.cold_thresholds: must be a non-empty list of durations like [30s, 1m], got []"),
    ("targets: []\n",
     "mglrud: config: targets: must be a non-empty list; leave the key out to age every memcg"),
    ("targets:\n  - memcg: /a\n  - memcg: relative/path\n",
     "mglrud: config: targets[1].memcg: must be a cgroup v2 path starting with '/', like /system.slice/*.service, "
     "got 'relative/path'"),
    ("targets:\n  - {memcg: /a, pid: 3}\n",
     "mglrud: config: targets[0]: needs exactly one of memcg, pid, comm, cmdline, unit, got memcg, pid"),
    ("targets:\n  - {name: x}\n",
     "mglrud: config: targets[0]: needs exactly one of memcg, pid, comm, cmdline, unit, got none"),
    ("targets:\n  - {pid: -4}\n",
     "mglrud: config: targets[0].pid: must be an integer from 1 to 4194304, got -4"),
    ("targets:\n  - {comm: a-very-long-process-name}\n",
     "mglrud: config: targets[0].comm: is longer than the 15 characters the kernel keeps in /proc/PID/comm: "
     "'a-very-long-process-name'; use cmdline for longer names"),
    ("targets:\n  - {cmdline: 'worker[0-'}\n",
     "mglrud: config: targets[0].cmdline: is not a valid regular expression: "
     "unterminated character set at position 6"),
    ("targets:\n  - {unit: nginx}\n",
     "mglrud: config: targets[0].unit: must be a systemd unit name like nginx.service (ending in one of "
     ".service, .scope, .slice, .socket, .mount, .swap, .target), got 'nginx'"),
    ("targets:\n  - {name: a, memcg: /x}\n  - {name: a, comm: y}\n",
     "mglrud: config: targets[1].name: 'a' is already the name of targets[0]"),
    ("targets:\n  - {memcg: /x, colour: red}\n",
     "mglrud: config: targets[0].colour: unknown key; known keys here: name, memcg, pid, comm, cmdline, unit, "
     "interval, can_swap, force_scan, uid, cgroup"),
    ("targets:\n  - {memcg: '/a**b'}\n",
     "mglrud: config: targets[0].memcg: ** must be a whole path component, as in /system.slice/**"),
    ("targets:\n  - {memcg: /x, interval: fast}\n",
     "mglrud: config: targets[0].interval: must be a duration with a unit like 30s, 5m or 1h, got 'fast'"),
    ("paths: {debugfs: sys/kernel/debug}\n",
     "mglrud: config: paths.debugfs: must be an absolute path, got 'sys/kernel/debug'"),
    ("log: {level: loud}\n",
     "mglrud: config: log.level: must be one of debug, info, warning, error, got 'loud'"),
    ("sources: [procfs, lrugen]\n",
     "mglrud: config: sources[1]: must be one of bpf, lru_gen, procfs, got 'lrugen'"),
    ("sources: procfs\n",
     "mglrud: config: sources: must be auto or a non-empty list of bpf, lru_gen, procfs, got 'procfs'"),
    ("procfs: {max_processes: 0}\n",
     "mglrud: config: procfs.max_processes: must be an integer from 1 to 100, got 0"),
    ("- just\n- a list\n",
     "mglrud: config: (top level): must be a mapping with keys like listen, aging, snapshot, metrics, targets, "
     "paths, log, sources, procfs, bpf, lru_gen, web_config_file, got list"),
    ("snapshot: 10s\n",
     "mglrud: config: snapshot: must be a mapping of interval, got str"),
]


@pytest.mark.parametrize("text,line", MALFORMED, ids=[m[1].split(": ")[2] + f"-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_config_one_line_exit_2(tmp_path, capsys, text, line):
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    assert cli.main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == line + "\n"


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("listen:\n  port: [1\n")
    assert cli.main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mglrud: config: {path}: is not valid YAML: line ")
    assert err.count("\n") == 1


def test_duplicate_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("aging:\n  interval: 1m\n  interval: 2m\n")
    assert cli.main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"mglrud: config: {path}: is not valid YAML: line 3, column 3: duplicate key 'interval'\n")


def test_missing_file(tmp_path, capsys):
    assert cli.main(["check", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"mglrud: config: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"


def test_bad_cli_override(capsys):
    assert cli.main(["run", "--listen.address", "example.org"]) == 2
    assert capsys.readouterr().err == (
        "mglrud: config: --listen.address: must be an IP address like 127.0.0.1 or ::1, got 'example.org'\n")


@pytest.mark.parametrize("index", [0, 8, 12, 17])
def test_malformed_config_as_subprocess(tmp_path, index):
    """The installed entry point path: no traceback, one line, exit 2."""
    text, line = MALFORMED[index]
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--config", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == line + "\n"


def test_defaults_need_no_file():
    cfg = load(None)
    assert (cfg.listen.address, cfg.listen.port) == ("127.0.0.1", 9746)
    assert [(t.name, t.kind, t.value) for t in cfg.targets] == [("all", "memcg", "/**")]
    assert cfg.aging.can_swap and cfg.aging.force_scan and not cfg.aging.dry_run
    assert cfg.metrics.buckets == cfg.metrics.cold_thresholds


def test_example_config_loads_and_covers_every_key():
    cfg = load(str(REPO / "config.example.yaml"))
    assert cfg.listen.port == 9746
    assert {t.kind for t in cfg.targets} == {"memcg", "pid", "comm", "cmdline", "unit"}
    postgres = next(t for t in cfg.targets if t.name == "postgres")
    assert postgres.interval == 30.0 and postgres.force_scan is True  # inherited
    assert next(t for t in cfg.targets if t.name == "jobs").force_scan is False
    assert cfg.metrics.idle_age_buckets == (15.0, 30.0, 60.0, 120.0)


def test_targets_inherit_and_override():
    cfg = loads("aging: {interval: 2m, can_swap: false}\ntargets:\n  - {memcg: /a, interval: 10s}\n  - {pid: 7}\n")
    a, b = cfg.targets
    assert (a.name, a.interval, a.can_swap) == ("memcg:/a", 10.0, False)
    assert (b.name, b.interval) == ("pid:7", 120.0)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("500ms", 0.5),
                                          ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text, "k") == seconds


def test_duration_format_round_trip():
    for s in (0.5, 1, 30, 90, 120, 3600, 3690):
        assert parse_duration(format_duration(s), "k") == s


@pytest.mark.parametrize("pattern,yes,no", [
    ("/**", ["/", "/a", "/a/b/c"], []),
    ("/", ["/"], ["/a"]),
    ("/system.slice/*.service", ["/system.slice/a.service"], ["/system.slice", "/system.slice/a.service/x", "/a.service"]),
    ("/a/**", ["/a", "/a/b", "/a/b/c"], ["/", "/ab"]),
    ("/a/?", ["/a/b"], ["/a/bc"]),
    ("/a b/*", ["/a b/c"], ["/a/c"]),
])
def test_memcg_glob(pattern, yes, no):
    g = memcg_glob(pattern)
    assert [p for p in yes if memcg_matches(g, p)] == yes
    assert [p for p in no if memcg_matches(g, p)] == []


def test_config_error_carries_key():
    with pytest.raises(ConfigError) as e:
        loads("targets:\n  - memcg: /a\n  - memcg: x\n")
    assert e.value.key == "targets[1].memcg"
