"""mglrud/btf.py: member offsets from BTF bytes built here by the format's rules
(Documentation/bpf/btf.rst), and the BPF source's -DTASK_FLAGS_OFFSET flag."""

import struct

import pytest

from mglrud import btf
from mglrud.sources import bpf_program


class Builder:
    """A BTF blob: types added in id order (ids from 1), names in the string section."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""
        self.next_id = 1

    def name(self, s: str) -> int:
        if not s:
            return 0
        off = len(self.strings)
        self.strings += s.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, ref: int, extra: bytes = b"", kind_flag: int = 0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, ref) + extra
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self.add(name, 1, 0, size, struct.pack("<I", size * 8))

    def struct(self, name: str, size: int, members, kind: int = 4, kind_flag: int = 0) -> int:
        extra = b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), size, extra, kind_flag)

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def kernelish() -> bytes:
    b = Builder()
    uint = b.int_("unsigned int", 4)
    ulong = b.int_("unsigned long", 8)
    b.add("", 13, 1, 0, struct.pack("<II", 0, uint))  # a FUNC_PROTO with one parameter: skipped by size
    b.add("pageflags", 6, 2, 4, struct.pack("<Ii", b.name("PG_locked"), 0) + struct.pack("<Ii", b.name("PG_swapbacked"), 19))
    # struct page { unsigned long flags; union { struct { ... }; unsigned long compound_head; }; }
    # (forward references: the union's id is 7, its inner struct 8)
    b.struct("page", 64, [("flags", ulong, 0), ("", 7, 64)])
    b.add("", 8, 0, 5)  # a typedef naming nothing... (id 6, unused)
    b.struct("", 40, [("", 8, 0), ("compound_head", ulong, 0)], kind=5)  # id 7: the union
    b.struct("", 40, [("lru", ulong, 0), ("mapping", ulong, 64)])  # id 8
    # struct task_struct { unsigned int __state; unsigned int bits:3 (bitfield); ...; unsigned int flags; }
    b.struct("task_struct", 4096, [("__state", uint, 0), ("bits", uint, (3 << 24) | 32), ("flags", uint, 352)],
             kind_flag=1)
    return b.blob()


def test_member_offsets():
    data = kernelish()
    assert btf.member_offset(data, "task_struct", "flags") == 44
    assert btf.member_offset(data, "page", "flags") == 0
    assert btf.member_offset(data, "page", "compound_head") == 8  # in an anonymous union, found later
    assert btf.member_offset(data, "page", "mapping") == 16  # two anonymous levels down


def test_what_is_not_there_is_said():
    data = kernelish()
    with pytest.raises(btf.BtfError, match="no struct mm_struct"):
        btf.member_offset(data, "mm_struct", "owner")
    with pytest.raises(btf.BtfError, match="struct task_struct has no member tgid"):
        btf.member_offset(data, "task_struct", "tgid")
    with pytest.raises(btf.BtfError, match="bitfield"):
        btf.member_offset(data, "task_struct", "bits")
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.member_offset(b"\x7fELF" + bytes(40), "task_struct", "flags")
    with pytest.raises(btf.BtfError, match="truncated"):
        btf.member_offset(data[:40], "task_struct", "flags")
    with pytest.raises(btf.BtfError, match="too short"):
        btf.member_offset(b"\x9f\xeb", "task_struct", "flags")


class FakeFS:
    def __init__(self, root):
        self.root = root

    def sys(self, *parts):
        return self.root.joinpath(*parts)


def kernel_for_the_probe() -> bytes:
    """kernelish() plus what the stock kernel's probe reads (offsets of a 6.12 build)."""
    b = Builder()
    uint = b.int_("unsigned int", 4)
    ulong = b.int_("unsigned long", 8)
    ptr = b.add("", 2, 0, 0)  # void *
    b.struct("task_struct", 4096, [("flags", uint, 352), ("tgid", uint, 1412 * 8), ("cgroups", ptr, 2344 * 8)])
    b.struct("mm_struct", 2048, [("owner", ptr, 1152 * 8)])
    b.struct("vm_area_struct", 176, [("vm_start", ulong, 0), ("vm_mm", ptr, 128)])
    b.struct("css_set", 512, [("subsys", ptr, 0)])
    memcg_id = b.struct("mem_cgroup_id", 8, [("id", uint, 0), ("ref", uint, 32)])
    b.struct("mem_cgroup", 4096, [("css", ptr, 0), ("id", memcg_id, 208 * 8)])
    b.struct("page", 64, [("flags", ulong, 0), ("compound_head", ulong, 64)])
    b.add("cgroup_subsys_id", 6, 2, 4, struct.pack("<Ii", b.name("cpuset_cgrp_id"), 0)
          + struct.pack("<Ii", b.name("memory_cgrp_id"), 4))
    b.add("pageflags", 6, 1, 4, struct.pack("<Ii", b.name("PG_swapbacked"), 17))
    return b.blob()


def test_the_probe_layout():
    flags = bpf_program.probe_layout(kernel_for_the_probe())
    assert flags == ["-DVMA_VM_MM=16", "-DMM_OWNER=1152", "-DTASK_TGID=1412", "-DTASK_CGROUPS=2344",
                     "-DCSS_SET_SUBSYS=0", "-DPAGE_FLAGS=0", "-DPAGE_COMPOUND_HEAD=8", "-DMEMCG_ID_ID=208",
                     "-DPAGE_SIZEOF=64", "-DMEMORY_CGRP_ID=4", "-DPG_SWAPBACKED=17", "-DMGLRUD_BTF=1"]
    with pytest.raises(btf.BtfError, match="no struct vm_area_struct"):
        bpf_program.probe_layout(kernelish())


def test_the_source_passes_offsets_or_includes_the_headers(tmp_path):
    fs = FakeFS(tmp_path)
    assert bpf_program.layout(fs, probe=False) == []  # no BTF: the program includes linux/sched.h
    (tmp_path / "kernel" / "btf").mkdir(parents=True)
    vmlinux = tmp_path / "kernel" / "btf" / "vmlinux"
    vmlinux.write_bytes(b"\x9f\xeb")
    assert bpf_program.layout(fs, probe=True) == []
    vmlinux.write_bytes(kernelish())
    assert bpf_program.layout(fs, probe=False) == ["-DTASK_FLAGS_OFFSET=44"]
    # a member the probe needs is missing: the probe's headers instead, the tracepoint's offset still
    assert bpf_program.layout(fs, probe=True) == ["-DTASK_FLAGS_OFFSET=44"]
    vmlinux.write_bytes(kernel_for_the_probe())
    got = bpf_program.layout(fs, probe=True)
    assert got[0] == "-DTASK_FLAGS_OFFSET=44" and got[-1] == "-DMGLRUD_BTF=1" and len(got) == 13
    # the tracepoints carry the mm: the program reads mm->owner->tgid at these offsets
    assert bpf_program.layout(fs, probe=False) == ["-DTASK_FLAGS_OFFSET=44", "-DMM_OWNER=1152",
                                                    "-DTASK_TGID=1412"]
