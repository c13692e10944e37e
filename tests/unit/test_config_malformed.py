"""More malformed configs (beside test_config.MALFORMED): each one line naming the key, exit 2, no traceback.

By kind: wrong types, unknown keys, bad durations, zero/negative intervals,
bad regexes, cgroup paths with `..`, nonexistent cgroups, unreadable or
non-text files, YAML that is not mglrud's. Also: every malformed config given
to a running daemon by SIGHUP leaves the running config in force.
"""

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, captured_roots, paths_for
from mglrud import cli
from mglrud.config import ConfigError, from_dict, loads
from mglrud.daemon import Daemon
from test_config import MALFORMED as BASE

E = "mglrud: config: "
DURATION = "must be a duration with a unit like 30s, 5m or 1h, got "
TOP = "listen, aging, snapshot, metrics, targets, paths, log, sources, procfs, bpf, lru_gen, web_config_file"

# (yaml text, the exact stderr line)
MORE = [
    # wrong types
    ("listen: {port: '9746'}\n", E + "listen.port: must be an integer from 1 to 65535, got '9746'"),
    ("listen: {port: true}\n", E + "listen.port: must be an integer from 1 to 65535, got True"),
    ("listen: [127.0.0.1]\n", E + "listen: must be a mapping of address, port, socket, got list"),
    ("targets: {memcg: /a}\n", E + "targets: must be a non-empty list; leave the key out to age every memcg"),
    ("targets: [5]\n", E + "targets[0]: must be a mapping of name, memcg, pid, comm, cmdline, unit, interval, "
                           "can_swap, force_scan, uid, cgroup, got int"),
    ("targets: [{pid: 1.5}]\n", E + "targets[0].pid: must be an integer from 1 to 4194304, got 1.5"),
    ("targets: [{memcg: /a, name: 5}]\n", E + "targets[0].name: must be a non-empty string, got 5"),
    ("aging: {dry_run: null}\n", E + "aging.dry_run: must be true or false, got None"),
    ("log: {level: 3}\n", E + "log.level: must be one of debug, info, warning, error, got 3"),
    ("paths: {procfs: 5}\n", E + "paths.procfs: must be a non-empty string, got 5"),
    ('paths: {procfs: "/proc\\0"}\n', E + "paths.procfs: must be an absolute path, got '/proc\\x00'"),
    ("metrics: {cold_thresholds: 30s}\n",
     E + "metrics.cold_thresholds: must be a non-empty list of durations like [30s, 1m], got '30s'"),
    ("procfs: {clear_refs: 1}\n", E + "procfs.clear_refs: must be true or false, got 1"),
    # unknown keys
    ("1: 2\n", E + f"1: unknown key; known keys here: {TOP}"),
    ("aging: {intervall: 1m}\n", E + "aging.intervall: unknown key; known keys here: interval, can_swap, "
                                     "force_scan, dry_run"),
    ("snapshot: {every: 10s}\n", E + "snapshot.every: unknown key; known keys here: interval"),
    # bad durations
    ("aging: {interval: ''}\n", E + "aging.interval: " + DURATION + "''"),
    ("aging: {interval: 1d}\n", E + "aging.interval: " + DURATION + "'1d'"),
    ("aging: {interval: 5 m}\n", E + "aging.interval: " + DURATION + "'5 m'"),
    ("aging: {interval: 1.5.s}\n", E + "aging.interval: " + DURATION + "'1.5.s'"),
    ("aging: {interval: 99999999999999999999h}\n",
     E + "aging.interval: must be at most 168h, got '99999999999999999999h'"),
    ("metrics: {idle_age_buckets: [1s, x]}\n", E + "metrics.idle_age_buckets[1]: " + DURATION + "'x'"),
    # zero and negative intervals
    ("aging: {interval: -1s}\n", E + "aging.interval: must be longer than zero, got '-1s'"),
    ("snapshot: {interval: 0ms}\n", E + "snapshot.interval: must be longer than zero, got '0ms'"),
    ("targets: [{memcg: /a, interval: 0s}]\n", E + "targets[0].interval: must be longer than zero, got '0s'"),
    ("targets: [{memcg: /a, interval: 0}]\n", E + "targets[0].interval: " + DURATION + "0"),
    ("metrics: {cold_thresholds: [0s]}\n", E + "metrics.cold_thresholds[0]: must be longer than zero, got '0s'"),
    # bad regexes
    ("targets: [{cmdline: '('}]\n",
     E + "targets[0].cmdline: is not a valid regular expression: missing ), unterminated subpattern at position 0"),
    ("targets: [{cmdline: '*x'}]\n",
     E + "targets[0].cmdline: is not a valid regular expression: nothing to repeat at position 0"),
    # cgroup paths with . and ..
    ("targets: [{memcg: /a/../b}]\n", E + "targets[0].memcg: must not contain '.' or '..' components (memcgs are "
                                          "matched by their canonical path), got '/a/../b'"),
    ("targets: [{memcg: /..}]\n", E + "targets[0].memcg: must not contain '.' or '..' components (memcgs are "
                                      "matched by their canonical path), got '/..'"),
    ("targets: [{memcg: /./a}]\n", E + "targets[0].memcg: must not contain '.' or '..' components (memcgs are "
                                       "matched by their canonical path), got '/./a'"),
    # other values
    ("listen: {port: 0}\n", E + "listen.port: must be an integer from 1 to 65535, got 0"),
    ("targets: [{unit: a/b.service}]\n",
     E + "targets[0].unit: must be a systemd unit name like nginx.service (ending in one of .service, .scope, "
         ".slice, .socket, .mount, .swap, .target), got 'a/b.service'"),
    ("sources: [bpf, bpf]\n", E + "sources[1]: bpf is listed twice"),
]


def _ids(cases):
    return [f"{i}-" + line[len(E):].split(":")[0] for i, (_, line) in enumerate(cases)]


@pytest.mark.parametrize("text,line", MORE, ids=_ids(MORE))
def test_more_malformed_configs(tmp_path, capsys, text, line):
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    assert cli.main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


def test_at_least_30_kinds_of_malformed_config():
    assert len(BASE) + len(MORE) >= 60
    assert len({text for text, _ in BASE + MORE}) == len(BASE + MORE), "no case counted twice"


@pytest.mark.parametrize("text,line", [MORE[i] for i in (0, 5, 20, 22, 27, 29)])
def test_run_refuses_them_too(tmp_path, text, line):
    """`mglrud run` (the unit's ExecStart) as a subprocess: exit 2, one line, no traceback."""
    path = tmp_path / "mglrud.yaml"
    path.write_text(text)
    p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--config", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", line + "\n")


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("log: {level: d\xe9bug}\n".encode("latin-1"))
    assert cli.main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err == f"{E}{path}: is not UTF-8 text: byte 0xe9 at offset 14\n"


def test_directory_instead_of_file(tmp_path, capsys):
    assert cli.main(["check", "-c", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{E}{tmp_path}: cannot read: Is a directory\n"


def test_python_tags_are_not_constructed(tmp_path, capsys):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['touch /tmp/mglrud-pwned']\n")
    assert cli.main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{E}{path}: is not valid YAML: line 1, column 1: could not "
                                              f"determine a constructor for the tag")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_unreadable_file(tmp_path):
    """Root reads anything, so the daemon runs as nobody against a 0600 file of root's."""
    path = tmp_path / "secret.yaml"
    path.write_text("log: {level: info}\n")
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--config", str(path)], cwd=REPO, user=65534,
                       group=65534, extra_groups=[], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"{E}{path}: cannot read: Permission denied\n")


def _root():
    roots = [r for r in captured_roots() if (r / "cgroup/cgroup.controllers").exists()]
    if not roots:
        pytest.skip("no captured root with a cgroup tree")
    return roots[0]


def test_nonexistent_cgroup_is_a_config_error_for_check(tmp_path, capsys):
    root = _root()
    flags = [f"--path.{k}={v}" for k, v in paths_for(root).items()]
    path = tmp_path / "mglrud.yaml"
    path.write_text("targets:\n  - {memcg: /mglrud-fixture/hot}\n  - {memcg: /mglrud-fixture/hto}\n")
    assert cli.main(["check", "-c", str(path), *flags]) == 2
    assert capsys.readouterr().err == (
        f"{E}targets[1].memcg: /mglrud-fixture/hto does not exist under {root / 'cgroup'}; a typo? "
        f"(a cgroup that appears later is picked up when it does)\n")
    # Globs may match nothing yet: not an error.
    path.write_text("targets:\n  - {memcg: '/mglrud-fixture/hto*'}\n")
    assert cli.main(["check", "-c", str(path), *flags]) in (0, 1)


def test_port_in_use_from_the_config_file(tmp_path):
    """The config names a port another process holds: one line naming listen.port, exit 2."""
    root = _root()
    flags = [f"--path.{k}={v}" for k, v in paths_for(root).items()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = tmp_path / "mglrud.yaml"
        path.write_text(f"listen: {{port: {port}}}\naging: {{dry_run: true}}\n")
        p = subprocess.run([sys.executable, "-m", "mglrud", "run", "-c", str(path), *flags],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == (
        f"mglrud: config: listen.port: cannot serve on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in p.stderr


class _Engine:
    def __init__(self):
        self.configured = []

    def configure(self, cfg):
        self.configured.append(cfg)


@pytest.mark.parametrize("text,line", BASE + MORE, ids=_ids(BASE + MORE))
def test_reload_with_a_malformed_config_keeps_the_old_one(text, line, caplog):
    old = from_dict({"targets": [{"name": "old", "memcg": "/**"}]})
    engine = _Engine()

    def reload_config():
        return loads(text, "mglrud.yaml")

    d = Daemon(old, reload_config, engine=engine)
    d._reload()
    assert d.config is old and engine.configured == []
    assert d.reload_problem.startswith("reload failed, previous config in force: ")
    # The log names the key just as the command line does.
    key = line[len(E):].split(": ")[0]
    assert any(key in r.getMessage() for r in caplog.records if r.levelname == "ERROR"), caplog.text
    with pytest.raises(ConfigError):
        reload_config()
