"""cli.py: `mglrud snapshot` output, exit statuses, one-line errors."""

import json
import socket
import subprocess
import sys

from conftest import REPO, paths_for
from mglrud import cli
from synth import lru_gen_text


def _flags(tmp_path):
    (tmp_path / "debugfs").mkdir()
    (tmp_path / "debugfs/lru_gen").write_text(lru_gen_text([
        (1, "/", [(0, [(5, 9000, 100, 200), (6, 100, 1, 2)])]),
        (3, "/svc", [(0, [(7, 4000, 256, 0), (8, 10, 5, 0)])]),
    ]))
    return [f"--path.{k}={v}" for k, v in paths_for(tmp_path).items()]


def test_snapshot_table(tmp_path, capsys):
    assert cli.main(["snapshot", "--no-age", *_flags(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MEMCG", "NODE", "GEN", "AGE", "ANON", "FILE"]
    assert out[1].split() == ["/", "0", "0", "0.1s", "4.0KiB", "8.0KiB"]
    assert ["/svc", "0", "anon", "1.0MiB", "0B", "0B", "0B"] in [line.split() for line in out]


def test_snapshot_json_is_the_endpoint_format(tmp_path, capsys):
    assert cli.main(["snapshot", "--no-age", "--json", *_flags(tmp_path)]) == 0
    snap = json.loads(capsys.readouterr().out)
    svc = next(m for m in snap["memcgs"] if m["memcg"] == "/svc")
    assert [g["seq"] for g in svc["generations"]] == [8, 7], "youngest first"
    assert svc["generations"][1]["idle_seconds_min"] == 0.01
    assert svc["resident_bytes"] == {"anon": 261 * 4096, "file": 0}


def test_snapshot_without_lru_gen_exits_1(tmp_path, capsys):
    flags = _flags(tmp_path)
    (tmp_path / "debugfs/lru_gen").unlink()
    assert cli.main(["snapshot", *flags]) == 1
    assert "source lru_gen is down" in capsys.readouterr().out


def test_address_not_on_this_host_names_listen_address(tmp_path):
    # 192.0.2.1 is TEST-NET-1: no host has it, so bind() fails with EADDRNOTAVAIL.
    p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--listen.address", "192.0.2.1",
                        "--listen.port", "0", *_flags(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == (
        "mglrud: config: listen.address: cannot serve on 192.0.2.1:0: Cannot assign requested address")
    assert "Traceback" not in p.stderr


def test_port_in_use_is_one_line_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "mglrud", "run", "--listen.port", str(port), *_flags(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == (
        f"mglrud: config: listen.port: cannot serve on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in p.stderr
