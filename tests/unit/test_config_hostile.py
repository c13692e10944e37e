"""Hostile configs (issue 18, items 4 and 5): what a config file can do to `check`, `run` and a reload.

Each case was a traceback, a hang, unbounded memory or a forged log line before: alias bombs,
deep nesting, unhashable keys, huge integers, a FIFO or /dev/zero as the file, control
characters in keys and values, NUL in selectors and paths, scoped / multicast / broadcast listen
addresses, sub-second intervals, 30k targets, empty and truncated files. Now each is one line
naming the key (control characters escaped), exit 2, in bounded time and memory; a reload keeps
the old config whatever the loader raises.
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from mglrud import cli, config
from mglrud.config import ConfigError, from_dict, loads
from mglrud.daemon import Daemon

E = "mglrud: config: "


def _limits():
    # A runaway loader dies of this instead of taking the test machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _check(path, command="check", timeout=30):
    """`mglrud COMMAND -c PATH` as the unit runs it: (exit status, stdout, stderr, seconds).

    Every kernel path points into an empty directory: should a regression let a config through,
    `run` must not read (or clear_refs) the host's processes with the default targets."""
    empty = Path(tempfile.mkdtemp(prefix="mglrud-empty-"))
    flags = [f"--path.{k}={empty / k}" for k in ("procfs", "sysfs", "debugfs", "cgroupfs", "tracefs")]
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "mglrud", command, "-c", str(path), *flags], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout, preexec_fn=_limits,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    empty.rmdir()
    return p.returncode, p.stdout, p.stderr, time.monotonic() - started


def _one_clean_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err[:300]!r}"
    line = err[:-1]
    assert line.isprintable(), f"control or bidi characters reach the terminal: {line[:300]!r}"
    assert len(line) < 700, f"a {len(line)}-character line"
    return line


def _bomb(levels=9, width=9):
    lines = ["listen:", "  port:", "    - &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# (file text, how the one line starts after "mglrud: config: "; PATH is the file's path)
CASES = [
    ("alias-bomb", _bomb(), "PATH: YAML aliases expand to more than"),
    ("nested-lists", "x: " + "[" * 50000 + "\n", "PATH: nested deeper than 32 levels"),
    ("nested-maps", "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "PATH: nested deeper than 32 levels"),
    ("list-key", "listen: {[1, 2]: 3}\n", "PATH: is not valid YAML: line 1, column 10: a list or mapping cannot"),
    ("map-key", "? {a: 1}\n: 2\n", "PATH: is not valid YAML: line 1, column 3: a list or mapping cannot"),
    ("huge-port", "listen: {port: " + "9" * 5000 + "}\n",
     "listen.port: must be an integer from 1 to 65535, got an integer of 5000 digits"),
    ("huge-hex-port", "listen: {port: 0x" + "f" * 5000 + "}\n",
     "listen.port: must be an integer from 1 to 65535, got an integer of 5000 digits"),
    ("huge-region", "bpf: {region_size: " + "9" * 5000 + "}\n",
     "bpf.region_size: must be a size like 2M, 512K or 1G, got an integer of 5000 digits"),
    ("huge-region-str", "bpf: {region_size: '" + "9" * 5000 + "M'}\n",
     "bpf.region_size: must be a size like 2M, 512K or 1G, got '99999"),
    ("newline-key", 'listen: {"port\\nmglrud: forged line": 1}\n', "listen.port\\nmglrud: forged line: unknown key"),
    ("nul-key", 'listen: {"a\\0b": 1}\n', "listen.a\\x00b: unknown key"),
    ("ansi-key", 'listen: {"\\e[31mred": 1}\n', "listen.\\x1b[31mred: unknown key"),
    ("rtl-key", 'listen: {"\\u202eevil": 1}\n', "listen.\\u202eevil: unknown key"),
    ("ansi-value", 'log: {level: "\\e[2J"}\n', "log.level: must be one of debug, info, warning, error, got '\\x1b[2J'"),
    ("rtl-value-name", 'targets: [{name: "a\\u202eb", memcg: /x}]\n', "targets[0].name: must not contain"),
    ("nul-memcg", 'targets: [{memcg: "/a\\0b"}]\n', "targets[0].memcg: must not contain"),
    ("newline-memcg", 'targets: [{memcg: "/a\\nb"}]\n', "targets[0].memcg: must not contain"),
    ("nul-comm", 'targets: [{comm: "bash\\0"}]\n', "targets[0].comm: must not contain"),
    ("nul-cmdline", 'targets: [{cmdline: "a\\0"}]\n', "targets[0].cmdline: must not contain"),
    ("nul-program", 'bpf: {program: "/x.bpf.c\\0"}\n', "bpf.program: must not contain"),
    ("scoped-address", "listen: {address: 'fe80::1%lo'}\n", "listen.address: must not carry a %zone"),
    ("multicast-v4", "listen: {address: 224.0.0.1}\n", "listen.address: 224.0.0.1 is a multicast address"),
    ("multicast-v6", "listen: {address: 'ff02::1'}\n", "listen.address: ff02::1 is a multicast address"),
    ("broadcast", "listen: {address: 255.255.255.255}\n", "listen.address: 255.255.255.255 is the broadcast"),
    ("tiny-aging", "aging: {interval: 0.000001ms}\n", "aging.interval: must be at least 1s, got '0.000001ms'"),
    ("tiny-snapshot", "snapshot: {interval: 999ms}\n", "snapshot.interval: must be at least 1s, got '999ms'"),
    ("tiny-target", "targets: [{memcg: /a, interval: 1ms}]\n", "targets[0].interval: must be at least 1s, got '1ms'"),
    ("tiny-half-life", "bpf: {half_life: 0.5ms}\n", "bpf.half_life: must be at least 1s, got '0.5ms'"),
    ("tiny-threshold", "metrics: {cold_thresholds: [0.0001ms]}\n",
     "metrics.cold_thresholds[0]: must be at least 1ms, got '0.0001ms'"),
    ("30k-targets", "targets:\n" + "".join(f"- {{memcg: /a{i}}}\n" for i in range(30000)),
     "PATH: is larger than 256 KiB"),
    ("2k-targets", "targets:\n" + "".join(f"- {{memcg: /a{i}}}\n" for i in range(2000)),
     "targets: at most 1000 targets, got 2000"),
    ("empty", "", "PATH: is empty"),
    ("only-comments", "# nothing yet\n", "PATH: is empty"),
    # cut in the middle of a value, and still valid YAML: /system.slice/foo instead of .../foo.service
    ("truncated", "targets:\n  - name: a\n    memcg: /system.slice/foo", "PATH: does not end with a newline"),
]


@pytest.mark.parametrize("name,text,want", CASES, ids=[c[0] for c in CASES])
def test_check_refuses_in_one_line(tmp_path, capsys, name, text, want):
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    started = time.monotonic()
    rc = cli.main(["check", "-c", str(path)])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    line = _one_clean_line(err)
    assert (rc, out) == (2, ""), err[:300]
    assert line.startswith(E + want.replace("PATH", str(path))), line
    assert seconds < 5, f"{name}: {seconds:.1f}s"


# The ones that took the process down before (a traceback, gigabytes, minutes), as the unit runs them.
DANGEROUS = ["alias-bomb", "nested-lists", "nested-maps", "list-key", "huge-port", "newline-key", "scoped-address",
             "30k-targets"]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("name", DANGEROUS)
def test_in_a_process_of_its_own(tmp_path, command, name):
    text, want = next((t, w) for n, t, w in CASES if n == name)
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    rc, out, err, seconds = _check(path, command)
    assert (rc, out) == (2, ""), err[-300:]
    assert _one_clean_line(err).startswith(E + want.replace("PATH", str(path)))
    assert seconds < 15, f"{seconds:.1f}s"


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    rc, out, err, seconds = _check(fifo, timeout=20)
    assert (rc, out, _one_clean_line(err)) == (2, "", f"{E}{fifo}: is not a regular file (a FIFO)")
    assert seconds < 10


def test_dev_zero_is_refused_at_once():
    rc, out, err, seconds = _check("/dev/zero", timeout=20)
    assert (rc, out, _one_clean_line(err)) == (2, "", f"{E}/dev/zero: is not a regular file (a character device)")
    assert seconds < 10


def test_a_big_file_is_refused_before_it_is_parsed(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 100_000)
    assert cli.main(["check", "-c", str(path)]) == 2
    assert _one_clean_line(capsys.readouterr().err) == (
        f"{E}{path}: is larger than 256 KiB (1000000 bytes): not a config file?")


def test_path_with_control_characters_is_escaped(tmp_path, capsys):
    path = tmp_path / "evil\x1b[31m\nname.yaml"
    path.write_text("")
    assert cli.main(["check", "-c", str(path)]) == 2
    assert _one_clean_line(capsys.readouterr().err) == (
        f"{E}{tmp_path}/evil\\x1b[31m\\nname.yaml: is empty (being written?); "
        f"leave out --config for the built-in defaults, or write {{}}")


def test_a_long_value_is_shortened_in_the_message():
    with pytest.raises(ConfigError) as e:
        loads("log: {level: '" + "x" * 100_000 + "'}\n")
    assert len(str(e.value)) < 400 and str(e.value).startswith("log.level: must be one of")


def test_30k_targets_are_refused_fast_without_yaml():
    """The duplicate-name check was O(n^2): 95 s for 30k targets. Now counted first, then a set."""
    doc = {"targets": [{"memcg": f"/a{i}"} for i in range(30_000)]}
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^targets: at most 1000 targets, got 30000"):
        from_dict(doc)
    assert time.monotonic() - started < 2


def test_duplicate_name_found_among_the_most_targets_allowed():
    doc = {"targets": [{"memcg": f"/a{i}"} for i in range(config.MAX_TARGETS - 1)] + [{"memcg": "/a7"}]}
    started = time.monotonic()
    with pytest.raises(ConfigError) as e:
        from_dict(doc)
    assert str(e.value) == f"targets[{config.MAX_TARGETS - 1}].name: 'memcg:/a7' is already the name of targets[7]"
    assert time.monotonic() - started < 2


def test_aliases_within_the_bound_still_work():
    text = ("aging: &a {interval: 2m}\n"
            "targets:\n  - &t {name: one, memcg: /a}\n  - {name: two, memcg: /b}\n")
    cfg = loads(text)
    assert cfg.aging.interval == 120 and [t.name for t in cfg.targets] == ["one", "two"]


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match=r"refers to itself"):
        loads("targets: &t [*t]\n")


# ---------------------------------------------------------------- reload keeps the old config


class _Engine:
    def __init__(self):
        self.configured = []

    def configure(self, cfg):
        self.configured.append(cfg)


@pytest.mark.parametrize("exc", [TypeError("unhashable type: 'list'"), RecursionError("maximum recursion depth"),
                                 ValueError("Exceeds the limit (4300 digits)"), MemoryError(),
                                 OSError(5, "Input/output error")], ids=lambda e: type(e).__name__)
def test_reload_keeps_the_old_config_whatever_the_loader_raises(exc, caplog):
    old = from_dict({"targets": [{"name": "old", "memcg": "/**"}]})
    engine = _Engine()

    def reload_config():
        raise exc

    d = Daemon(old, reload_config, engine=engine)
    d._reload()
    assert d.config is old and engine.configured == []
    assert d.reload_problem.startswith("reload failed, previous config in force: ")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and type(exc).__name__ in errors[0], errors


@pytest.mark.parametrize("name", ["empty", "truncated", "alias-bomb", "nested-maps", "list-key", "huge-port",
                                  "newline-key"])
def test_reload_of_a_bad_file_keeps_the_old_config(tmp_path, name, caplog):
    text = next(t for n, t, _ in CASES if n == name)
    path = tmp_path / "mglrud.yaml"
    path.write_text("targets: [{name: old, memcg: /**}]\n")
    old = config.load(str(path))
    path.write_text(text)
    engine = _Engine()
    d = Daemon(old, lambda: config.load(str(path)), engine=engine)
    d._reload()
    assert d.config is old and engine.configured == []
    assert "\n" not in d.reload_problem and d.reload_problem.isprintable()


@pytest.mark.parametrize("address,want", [
    ("fe80::1%lo", "--listen.address: must not carry a %zone (a scoped link-local address), got 'fe80::1%lo'"),
    ("ff02::1", "--listen.address: ff02::1 is a multicast address: mglrud listens on a unicast one"),
])
def test_the_command_line_address_is_held_to_the_same_rule(tmp_path, address, want):
    empty = tmp_path / "empty"
    empty.mkdir()
    flags = [f"--path.{k}={empty / k}" for k in ("procfs", "sysfs", "debugfs", "cgroupfs", "tracefs")]
    p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--listen.address", address, "--listen.port", "0",
                        *flags], cwd=REPO, capture_output=True, text=True, timeout=60, preexec_fn=_limits)
    assert (p.returncode, p.stdout) == (2, "")
    assert _one_clean_line(p.stderr).startswith(E + want)
