"""A BPF object built by clang, loaded through libbpf (libbpf.so.1, Debian's libbpf1) with ctypes.

libbpf's C API (tools/lib/bpf/libbpf.h and bpf.h of the kernel tree, libbpf 1.x semantics:
functions returning pointers return NULL and set errno; functions returning int return
-errno): bpf_object__open_file, bpf_object__load (CO-RE relocations against
/sys/kernel/btf/vmlinux, BPF_PSEUDO_FUNC for bpf_loop() callbacks, ksyms from /proc/kallsyms),
bpf_object__find_program_by_name, bpf_program__attach, bpf_link__destroy,
bpf_object__find_map_by_name, bpf_map__fd, bpf_map_lookup_elem, bpf_map_update_elem,
bpf_map_get_next_key, bpf_object__close. Nothing is compiled at run time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

LIBBPF = "libbpf.so.1"


class LibbpfError(Exception):
    """One line a user can act on."""


def _lib(name: str = LIBBPF) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise LibbpfError(f"{name} not loadable ({e}): install Debian's libbpf1") from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_program__attach", vp, [vp]),
        ("bpf_link__destroy", i, [vp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_map__fd", i, [vp]),
        ("bpf_map_lookup_elem", i, [i, vp, vp]),
        ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
        ("bpf_map_get_next_key", i, [i, vp, vp]),
        ("libbpf_get_error", ctypes.c_long, [vp]),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


class Object:
    """One BPF object file, opened and loaded; programs attached by name."""

    def __init__(self, path: str, lib: str = LIBBPF):
        if not os.path.exists(path):
            raise LibbpfError(f"{path}: no such BPF object (build it with clang: bench/bracket/Makefile)")
        self.lib = _lib(lib)
        self.links: dict[str, int] = {}
        self.obj = self.lib.bpf_object__open_file(path.encode(), None)
        if not self.obj:
            raise LibbpfError(f"{path}: libbpf cannot open it: {os.strerror(ctypes.get_errno())}")
        rc = self.lib.bpf_object__load(self.obj)
        if rc:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
            raise LibbpfError(f"{path}: the kernel refused it: {os.strerror(-rc)} (libbpf's log above)")

    def attach(self, name: str) -> None:
        prog = self.lib.bpf_object__find_program_by_name(self.obj, name.encode())
        if not prog:
            raise LibbpfError(f"no program {name!r} in the object")
        link = self.lib.bpf_program__attach(prog)
        if not link:
            raise LibbpfError(f"{name}: attach failed: {os.strerror(ctypes.get_errno())}")
        self.links[name] = link

    def detach(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link:
            self.lib.bpf_link__destroy(link)

    def map_fd(self, name: str) -> int:
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise LibbpfError(f"no map {name!r} in the object")
        return self.lib.bpf_map__fd(m)

    def lookup(self, fd: int, key: ctypes.Structure | ctypes._SimpleCData, value) -> bool:
        return self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) == 0

    def update(self, fd: int, key, value) -> None:
        if self.lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0):
            raise LibbpfError(f"map update: {os.strerror(ctypes.get_errno())}")

    def keys(self, fd: int, key_type):
        prev, key = None, key_type()
        while self.lib.bpf_map_get_next_key(fd, ctypes.byref(prev) if prev is not None else None,
                                            ctypes.byref(key)) == 0:
            yield key
            prev, key = key, key_type()

    def close(self) -> None:
        for name in list(self.links):
            self.detach(name)
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
