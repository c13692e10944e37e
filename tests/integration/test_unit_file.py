"""deploy/mglrud.service and scripts/install.sh on the host: `systemd-analyze verify` is clean, the
offline security review is at most 5.0, the install lays out a runnable mglrud and keeps an existing
config. Starting the unit under systemd is tested in a guest (tests/vm/systemd/run.sh)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "mglrud.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def install(tmp_path: Path) -> tuple[Path, Path]:
    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    p = subprocess.run([REPO / "scripts/install.sh"], env={"PATH": "/usr/bin:/bin", "PREFIX": str(prefix),
                                                           "SYSCONFDIR": str(etc)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return prefix, etc


def test_install_layout_and_launcher(tmp_path):
    prefix, etc = install(tmp_path)
    assert (prefix / "lib/mglrud/mglrud/daemon.py").is_file()
    assert (prefix / "lib/mglrud/bpf").is_dir()
    assert list((prefix / "lib/mglrud/mglrud/__pycache__").glob("daemon.*.pyc")), "byte-compiled at install"
    unit = (etc / "systemd/system/mglrud.service").read_text()
    assert f"ExecStart={prefix}/bin/mglrud run --config {etc}/mglrud/config.yaml\n" in unit
    assert (etc / "mglrud/config.yaml").read_text() == (REPO / "config.example.yaml").read_text()
    # The launcher runs Debian's python3 on the installed copy, not on this checkout.
    p = subprocess.run([prefix / "bin/mglrud", "check", "--config", etc / "mglrud/config.yaml"],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode in (0, 1), p.stderr  # 1: this host has no MGLRU; not 2: the example config is valid
    assert "lru_gen enabled" in p.stdout
    assert (prefix / "bin/mglrud").read_text().startswith("#!/usr/bin/python3\n")


def test_install_keeps_an_existing_config(tmp_path):
    prefix, etc = install(tmp_path)
    (etc / "mglrud/config.yaml").write_text("aging: {interval: 2m}\n")
    install(tmp_path)
    assert (etc / "mglrud/config.yaml").read_text() == "aging: {interval: 2m}\n"
    assert (etc / "mglrud/config.example.yaml").is_file()


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path):
    prefix, etc = install(tmp_path)  # verify checks that ExecStart's binary exists
    unit = etc / "systemd/system/mglrud.service"
    p = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    # ...and the repository's file differs from the installed one only in those paths.
    repo_lines = UNIT.read_text().splitlines()
    installed = unit.read_text().replace(f"{prefix}/bin/", "/usr/local/bin/").replace(f"{etc}/", "/etc/")
    assert installed.splitlines() == repo_lines


@needs_analyze
def test_security_exposure_at_most_5(capsys):
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", UNIT],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for mglrud\.service: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true deploy/mglrud.service: exposure {m.group(1)}")
    assert float(m.group(1)) <= 5.0
    # What the daemon needs and no more.
    text = UNIT.read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert sorted(caps) == ["CAP_BPF", "CAP_DAC_OVERRIDE", "CAP_PERFMON", "CAP_SYS_PTRACE"]
    assert re.search(r"^ReadWritePaths=-/sys/kernel/debug/lru_gen$", text, re.M)
    for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "RestartPreventExitStatus=2", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                 "PrivateTmp=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\S+$", text, re.M)
