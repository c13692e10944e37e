"""The accessed-bit probe's availability check (mglrud/sources/bpf_probe.py), through the FS seam:
each way a kernel can lack it gives one line saying why; a stock x86-64 kernel gives fexit."""

import importlib.util

import pytest

from mglrud.config import Paths
from mglrud.fs import FS
from mglrud.sources import bpf_probe
from mglrud.sources.bpf_hotness import probe as probe_bpf

KALLSYMS = """ffffffff81000000 T _stext
ffffffff8107a2b0 T ptep_test_and_clear_young
ffffffff8107a2e0 T pmdp_test_and_clear_young
ffffffff82a1b0c8 D vmemmap_base
"""


def machine(tmp_path, kallsyms=KALLSYMS, btf=True, traceable=True, headers=True):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "kallsyms").write_text(kallsyms)
    (tmp_path / "sys" / "kernel" / "btf").mkdir(parents=True)
    if btf:
        (tmp_path / "sys" / "kernel" / "btf" / "vmlinux").write_bytes(b"\x9f\xeb")
    (tmp_path / "tracing").mkdir()
    funcs = "ptep_test_and_clear_young\npmdp_test_and_clear_young\n" if traceable else "pmdp_test_and_clear_young\n"
    (tmp_path / "tracing" / "available_filter_functions").write_text("do_sys_open\n" + funcs)
    if headers:
        (tmp_path / "modules" / "6.1.0-57-amd64" / "build" / "include").mkdir(parents=True)
    return FS(Paths(procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "sys"), debugfs=str(tmp_path / "debugfs"),
                    tracefs=str(tmp_path / "tracing")))


PROBE = bpf_probe.probe


def check(tmp_path, fs, machine="x86_64"):
    return PROBE(fs, machine=machine, release="6.1.0-57-amd64", modules=tmp_path / "modules")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)


def test_stock_x86_kernel_gets_fexit(tmp_path):
    c = check(tmp_path, machine(tmp_path))
    assert (c.usable, c.mode, c.vmemmap_base) == (True, "fexit", 0xffffffff82a1b0c8)
    assert "fexit on ptep_test_and_clear_young and pmdp_test_and_clear_young" in c.detail
    assert str(tmp_path / "modules" / "6.1.0-57-amd64" / "build") in c.detail


def test_no_btf_falls_back_to_kretprobe(tmp_path):
    c = check(tmp_path, machine(tmp_path, btf=False))
    assert (c.usable, c.mode) == (True, "kretprobe") and "CONFIG_DEBUG_INFO_BTF" in c.detail


def test_not_ftrace_able_falls_back_to_kretprobe(tmp_path):
    c = check(tmp_path, machine(tmp_path, traceable=False))
    assert (c.usable, c.mode) == (True, "kretprobe") and "available_filter_functions" in c.detail


@pytest.mark.parametrize("why, kw, arch, expect", [
    ("arm64", {}, "aarch64", "no accessed-bit probe on aarch64"),
    ("symbol missing", {"kallsyms": KALLSYMS.replace("T ptep_test_and_clear_young", "T other")}, "x86_64",
     "no symbol ptep_test_and_clear_young in"),
    ("addresses hidden", {"kallsyms": KALLSYMS.replace("ffffffff82a1b0c8", "0000000000000000")}, "x86_64",
     "no address for vmemmap_base: run mglrud as root"),
    ("no headers", {"headers": False}, "x86_64", "install linux-headers-6.1.0-57-amd64"),
])
def test_unusable_says_why_in_one_line(tmp_path, why, kw, arch, expect):
    c = check(tmp_path, machine(tmp_path, **kw), machine=arch)
    assert not c.usable and c.mode == "" and expect in c.detail and "\n" not in c.detail


def test_no_bcc(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bcc" else real(n, *a))
    c = check(tmp_path, machine(tmp_path))
    assert not c.usable and "apt install python3-bpfcc" in c.detail


def test_headers_from_bcc_kernel_source(tmp_path, monkeypatch):
    src = tmp_path / "headers"
    src.mkdir()
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(src))
    c = check(tmp_path, machine(tmp_path, headers=False))
    assert c.usable and str(src) in c.detail


def test_selection_without_tracepoint_uses_the_probe(tmp_path, monkeypatch):
    fs = machine(tmp_path)
    monkeypatch.setattr(bpf_probe, "probe", lambda fs: check(tmp_path, fs))
    p = probe_bpf(fs)
    assert p.usable and "fexit" in p.detail


def test_selection_without_tracepoint_nor_probe_says_both(tmp_path, monkeypatch):
    fs = machine(tmp_path, headers=False)
    monkeypatch.setattr(bpf_probe, "probe", lambda fs: check(tmp_path, fs))
    p = probe_bpf(fs)
    assert not p.usable and "mm_vmscan_lru_gen_young" in p.detail and "install linux-headers" in p.detail


def _cpp(tmp_path, *args: str) -> str:
    """The C preprocessor over bpf/hotness.bpf.c, each kernel header it #includes an empty
    stand-in under tmp_path: its stdout."""
    import re
    import shutil
    import subprocess

    from mglrud.sources.bpf_program import DEFAULT_PROGRAM

    cpp = shutil.which("cpp")
    assert cpp, "no cpp (build-essential, scripts/install-deps)"
    src = DEFAULT_PROGRAM.read_text()
    for header in set(re.findall(r"#include <([^>]+)>", src)):
        (tmp_path / header).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / header).write_text("")
    return subprocess.run([cpp, "-nostdinc", "-I", str(tmp_path), *args, str(DEFAULT_PROGRAM)],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("btf", [True, False], ids=["members-from-btf", "headers"])
@pytest.mark.parametrize("attach", ["MGLRUD_ATTACH_FEXIT", "MGLRUD_ATTACH_KPROBE"])
def test_the_kprobe_variant_has_struct_pt_regs_in_every_layout(attach, btf, tmp_path):
    """The kprobe + kretprobe pair takes its arguments and return value from struct pt_regs
    (bcc turns the arguments into ctx->di..., PT_REGS_RC() is ctx->ax): a header defining it must
    be included. With the members from BTF (-DMGLRUD_BTF) linux/sched.h, which brought it, is not:
    the fallback failed to compile in the stock guest, and the source stayed down. Checked with
    the C preprocessor over bpf/hotness.bpf.c with the flags sources/bpf_program.py passes, each
    kernel header an empty stand-in (the program's own #include lines name them)."""
    import re

    flags = [f"-D{attach}", "-DVMEMMAP_BASE=0xffffffff82a1b0c8ULL", "-DTASK_FLAGS_OFFSET=44"]
    if btf:
        flags += ["-DMGLRUD_BTF=1"]
    deps = _cpp(tmp_path, "-M", *flags)
    included = {h for h in re.findall(r"\S+\.h", deps)}
    pt_regs = {str(tmp_path / "asm/ptrace.h"), str(tmp_path / "linux/sched.h")}
    if attach == "MGLRUD_ATTACH_KPROBE":
        assert included & pt_regs, f"{attach} {'with' if btf else 'without'} MGLRUD_BTF includes {sorted(included)}"
    else:  # fexit takes its arguments from the trampoline's context: no pt_regs, no header for it
        assert not btf or not included & pt_regs, sorted(included)


@pytest.mark.parametrize("flags, expect", [
    (["-DMGLRUD_ATTACH_FEXIT"], True),
    (["-DMGLRUD_ATTACH_KPROBE"], False),  # no lru_gen_seq_write exit to flush at: counted per harvest
    (["-DMGLRUD_ATTACH_FEXIT", "-DHEAT_HARVESTERS=7"], False),  # other harvesters' runs would race
    ([], False),  # the tracepoints
])
def test_the_aging_run_only_where_its_flush_is(tmp_path, flags, expect):
    """The aging run (bpf/hotness.bpf.c, aging_run) holds mglrud's aging harvests back from heat
    until the key changes or the write to lru_gen returns: it must come with the fexit on
    lru_gen_seq_write() that adds the last run, and only where heat is the aging's alone. Checked
    with the C preprocessor, kernel headers empty stand-ins."""
    flags = flags + ["-DVMEMMAP_BASE=0xffffffff82a1b0c8ULL", "-DTASK_FLAGS_OFFSET=44", "-DMGLRUD_BTF=1",
                     "-DUSE_RANGE_EVENT"]
    out = _cpp(tmp_path, "-P", *flags)
    assert ("KRETFUNC_PROBE(lru_gen_seq_write" in out) == expect
    assert ("harvest_aging(vma, addr, entry, nr_pages)" in out) == expect
    assert ("BPF_ARRAY(aging_run" in out) == expect
