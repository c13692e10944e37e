"""The BPF loader child (mglrud/bpf_loader.py) and the program file it compiles as root (issue 18, items 7, 9, 13).

- Only the installed package is imported in the child: a `mglrud` package (or a `json.py`)
  planted in a writable working directory must not run as root, as it did with `python3 -m`.
- A child that times out, or an OSError after it started, leaves no child running and no zombie.
- `bpf.program` must belong to root (or the running uid) and be writable by nobody else, nor may
  any directory above it be (mglrud/filetrust.py); `mglrud check` refuses it naming the key.
"""

import os
import stat
import subprocess

import pytest

from mglrud import bpf_loader, cli, filetrust
from mglrud.sources import bpf_hotness
from test_bpf_hotness import FAKE_BCC

SLOW_BCC = FAKE_BCC.replace('''        if b"broken" in src_file:''', '''        if b"slow" in src_file:
            import time
            time.sleep(3600)
        if b"broken" in src_file:''')
EVENT = "mm_vmscan_lru_gen_young_range"


@pytest.fixture
def bcc_dir(tmp_path, monkeypatch):
    (tmp_path / "fakebcc" / "bcc").mkdir(parents=True)
    (tmp_path / "fakebcc" / "bcc" / "__init__.py").write_text(SLOW_BCC)
    monkeypatch.setenv("FAKE_BCC_MARK", str(tmp_path / "mark"))
    return str(tmp_path / "fakebcc")


@pytest.fixture
def children(monkeypatch):
    """Every child the loader starts."""
    started = []

    class Recording(subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)

    monkeypatch.setattr(bpf_loader.subprocess, "Popen", Recording)
    yield started
    for p in started:  # whatever the test found, leave nothing behind
        if p.poll() is None:
            p.kill()
            p.wait()


def _close(maps, held):
    for fd in list(maps.values()) + held:
        os.close(fd)


def _reaped(proc) -> bool:
    """Waited for: returncode set, and no /proc entry (a zombie keeps one until reaped)."""
    return proc.returncode is not None and not os.path.exists(f"/proc/{proc.pid}")


def test_a_package_planted_in_the_working_directory_is_not_imported(tmp_path, bcc_dir, monkeypatch):
    plant = tmp_path / "writable-cwd"
    (plant / "mglrud").mkdir(parents=True)
    marker = tmp_path / "PLANTED"
    code = f"open({str(marker)!r}, 'a').write(__name__ + ' ran as uid %d\\n' % __import__('os').getuid())\n"
    for name in ("mglrud/__init__.py", "mglrud/bpf_loader.py", "json.py", "socket.py"):
        (plant / name).write_text(code)
    (plant / "bcc").mkdir()
    (plant / "bcc" / "__init__.py").write_text(code)
    monkeypatch.chdir(plant)
    maps, held, _ = bpf_loader.load(tmp_path / "hotness.bpf.c", [], EVENT, bpf_hotness.MAPS, timeout=60,
                                    extra_path=(bcc_dir,))
    _close(maps, held)
    assert not marker.exists(), marker.read_text()


def test_pythonpath_is_not_honoured_by_the_child(tmp_path, bcc_dir, monkeypatch):
    """The daemon's environment (PYTHONPATH, PYTHONSTARTUP) does not choose the child's code either."""
    evil = tmp_path / "evil"
    (evil / "bcc").mkdir(parents=True)
    marker = tmp_path / "PLANTED"
    (evil / "bcc" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('bcc from PYTHONPATH')\n")
    monkeypatch.setenv("PYTHONPATH", str(evil))
    maps, held, _ = bpf_loader.load(tmp_path / "hotness.bpf.c", [], EVENT, bpf_hotness.MAPS, timeout=60,
                                    extra_path=(bcc_dir,))
    _close(maps, held)
    assert not marker.exists()


def test_a_child_that_times_out_is_killed_and_reaped(tmp_path, bcc_dir, children):
    with pytest.raises(bpf_loader.LoadError, match=r"did not answer within 2 s"):
        bpf_loader.load(tmp_path / "slow.bpf.c", [], EVENT, bpf_hotness.MAPS, timeout=2, extra_path=(bcc_dir,))
    assert len(children) == 1 and _reaped(children[0]), "a zombie (or a child still running) is left"


def test_an_oserror_after_the_child_started_kills_and_reaps_it(tmp_path, bcc_dir, children, monkeypatch):
    def broken(*_a, **_kw):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(bpf_loader.socket, "recv_fds", broken)
    with pytest.raises(bpf_loader.LoadError, match=r"cannot run the BPF loader .*Input/output error"):
        bpf_loader.load(tmp_path / "slow.bpf.c", [], EVENT, bpf_hotness.MAPS, timeout=60, extra_path=(bcc_dir,))
    assert len(children) == 1 and _reaped(children[0]), "the child is left running or unreaped"


# ---------------------------------------------------------------- bpf.program: a file only root can change


def _program(tmp_path, mode=0o644, dir_mode=0o755):
    d = tmp_path / "prog"
    d.mkdir(exist_ok=True)
    f = d / "hotness.bpf.c"
    f.write_text("int x;\n")
    f.chmod(mode)
    d.chmod(dir_mode)
    tmp_path.chmod(0o755)
    return f


def test_a_root_owned_program_nobody_else_can_write_is_trusted(tmp_path):
    assert filetrust.untrusted(str(_program(tmp_path))) == ""
    assert filetrust.untrusted(str(_program(tmp_path, dir_mode=0o1777))) == "", "a sticky directory (/tmp)"


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o620])
def test_a_program_writable_by_group_or_others_is_refused(tmp_path, mode):
    f = _program(tmp_path, mode)
    assert filetrust.untrusted(str(f)) == (
        f"{f} is writable by group or others (mode {mode:04o}): it is compiled into the kernel as root "
        f"(chmod go-w it)")


def test_a_program_in_a_directory_others_can_write_is_refused(tmp_path):
    f = _program(tmp_path, dir_mode=0o777)
    assert filetrust.untrusted(str(f)).startswith(f"{f}: its directory {f.parent} is writable by group or others "
                                                  f"(mode 0777)")


def test_a_symlink_is_judged_by_its_target(tmp_path):
    f = _program(tmp_path, 0o666)
    link = tmp_path / "link.bpf.c"
    link.symlink_to(f)
    assert filetrust.untrusted(str(link)).startswith(f"{link} (-> {f}) is writable by group or others")


def test_a_program_owned_by_someone_else_is_refused(tmp_path):
    """As root: the file is given to nobody. Not as root (no chown): the same file, with root as the
    only trusted owner, which is the rule the daemon applies when it runs as root."""
    f = _program(tmp_path)
    if os.geteuid() == 0:
        os.chown(f, 65534, 65534)
        problem, owner = filetrust.untrusted(str(f)), 65534
    else:
        problem, owner = filetrust.untrusted(str(f), uids=(0,)), os.geteuid()
    assert problem == (f"{f} belongs to uid {owner}, not root: it is compiled into the kernel as root "
                       f"(chown root it, or name a file root owns)")


def test_the_loader_refuses_an_untrusted_program_before_starting_a_child(tmp_path, children):
    f = _program(tmp_path, 0o666)
    with pytest.raises(bpf_loader.LoadError, match=r"^bpf\.program: .* is writable by group or others"):
        bpf_loader.load(f, [], EVENT, bpf_hotness.MAPS, timeout=60)
    assert children == []


def test_check_refuses_it_naming_the_key(tmp_path, capsys):
    f = _program(tmp_path, 0o666)
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(f"bpf: {{program: '{f}'}}\n")
    assert cli.main(["check", "-c", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"mglrud: config: bpf.program: {f} is writable by group or others "
                                       f"(mode 0666): it is compiled into the kernel as root (chmod go-w it)\n")


def test_the_default_program_passes_its_own_rule():
    assert stat.S_ISREG(os.stat(bpf_hotness.DEFAULT_PROGRAM).st_mode)
    assert filetrust.untrusted(str(bpf_hotness.DEFAULT_PROGRAM)) == ""

