"""The BPF loader child on a kernel without the tracepoint (mglrud/bpf_loader.py, attach="fexit"):
it hands over the fexit links, and falls back to kprobe+kretprobe when fexit fails, saying why.
bcc is a stand-in (a fake module on the child's extra_path) whose "descriptors" are memfds named by kind."""

import os

import pytest

from mglrud import bpf_loader
from mglrud.sources import bpf_hotness

FAKE_BCC = '''
import os

class _Table:
    def __init__(self, name):
        self.map_fd = os.memfd_create(name)

class _Fn:
    def __init__(self):
        self.fd = os.memfd_create("prog")

class BPF:
    def __init__(self, src_file, cflags):
        self.tracepoint_fds, self.kfunc_exit_fds, self.kprobe_fds = {}, {}, {}
        if "-DMGLRUD_ATTACH_FEXIT" in cflags:
            if os.environ.get("FAKE_NO_FEXIT"):
                raise Exception("Failed to attach BPF to exit kernel func")
            for f in (b"ptep_test_and_clear_young", b"pmdp_test_and_clear_young"):
                self.kfunc_exit_fds[b"kretfunc__" + f] = os.memfd_create("fexit")
        elif "-DMGLRUD_ATTACH_KPROBE" in cflags:
            for f in (b"ptep_test_and_clear_young", b"pmdp_test_and_clear_young"):
                self.kprobe_fds[b"p_" + f] = {b"kprobe__" + f: os.memfd_create("kprobe")}
                self.kprobe_fds[b"r_" + f] = {b"kretprobe__" + f: os.memfd_create("kprobe")}
        self.funcs = {b"f": _Fn()}

    def num_open_tracepoints(self):
        return len(self.tracepoint_fds)

    def num_open_kprobes(self):
        return sum(len(v) for v in self.kprobe_fds.values())

    def __getitem__(self, name):
        return _Table(name)
'''


@pytest.fixture
def fake_bcc(tmp_path, monkeypatch):
    (tmp_path / "fakebcc" / "bcc").mkdir(parents=True)
    (tmp_path / "fakebcc" / "bcc" / "__init__.py").write_text(FAKE_BCC)
    (tmp_path / "hotness.bpf.c").write_text("/* the stand-in bcc does not read it */\n")
    return tmp_path


def kinds(fds):
    return sorted(os.readlink(f"/proc/self/fd/{fd}").split()[0].removeprefix("/memfd:") for fd in fds)


def test_fexit_links_are_handed_over(fake_bcc):
    answer = {}
    maps, held, _ = bpf_loader.load(fake_bcc / "hotness.bpf.c", [], "fexit", bpf_hotness.MAPS, timeout=60,
                                    attach="fexit", answer_out=answer,
                                    extra_path=(str(fake_bcc / "fakebcc"),))
    try:
        assert list(maps) == bpf_hotness.MAPS
        assert kinds(held) == ["fexit", "fexit", "prog"]
        assert answer["mode"] == "fexit" and "fallback" not in answer
    finally:
        for fd in list(maps.values()) + held:
            os.close(fd)


def test_fexit_failing_falls_back_to_kretprobe_and_says_why(fake_bcc, monkeypatch):
    monkeypatch.setenv("FAKE_NO_FEXIT", "1")
    answer = {}
    maps, held, _ = bpf_loader.load(fake_bcc / "hotness.bpf.c", [], "fexit", bpf_hotness.MAPS, timeout=60,
                                    attach="fexit", answer_out=answer,
                                    extra_path=(str(fake_bcc / "fakebcc"),))
    try:
        assert kinds(held) == ["kprobe"] * 4 + ["prog"]
        assert answer["mode"] == "kretprobe"
        assert "as fexit" in answer["fallback"] and "Failed to attach BPF to exit kernel func" in answer["fallback"]
    finally:
        for fd in list(maps.values()) + held:
            os.close(fd)
