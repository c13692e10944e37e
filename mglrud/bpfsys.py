"""The bpf(2) system call, for the few map operations the daemon needs (Documentation/bpf/,
include/uapi/linux/bpf.h; man 2 bpf).

The BPF source compiles and attaches its program in a short-lived child process
(bcc and the LLVM it loads cost the daemon ~70 MiB of resident memory that a
read loop does not need; mglrud/sources/bpf_hotness.py, "Loader"). The child
hands the daemon file descriptors of the maps and of the attachment; this module
reads and writes those maps with nothing but ctypes: element lookup, update,
delete, key iteration, and batched lookup of a whole hash map when the kernel
has it (5.6+).

Values of per-CPU maps come back as one copy per *possible* CPU, each rounded
up to 8 bytes (kernel/bpf/syscall.c, bpf_map_value_size()).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

from mglrud import kernelwrite

# include/uapi/linux/bpf.h, enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24

# enum bpf_map_type, the ones bpf/hotness.bpf.c uses
MAP_TYPE_HASH = 1
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
PERCPU_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, 8, 10}  # + LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

ANY = 0  # update flags: BPF_ANY

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


_NR = _NR_BPF.get(platform.machine())


def _sys_bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR
    if nr is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) number unknown for {platform.machine()}")
    r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise BpfError(e, os.strerror(e))
    return r


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs ("0-3,8-11" -> the highest + 1, as the kernel sizes per-CPU values)."""
    with open(path) as f:  # closed here, not whenever the garbage collector gets to it
        text = f.read().strip()
    top = 0
    for part in text.split(","):
        top = max(top, int(part.split("-")[-1]))
    return top + 1


class MapInfo(ctypes.Structure):
    # struct bpf_map_info, the leading fields (the kernel fills what fits in the length we give)
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    # union bpf_attr.info: u32 bpf_fd, u32 info_len, u64 info
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info)), 16)
    _sys_bpf(OBJ_GET_INFO_BY_FD, attr)
    return info


class Map:
    """One BPF map, by file descriptor (owned: close() closes it)."""

    def __init__(self, fd: int, ncpus: int | None = None):
        self.fd = fd
        info = map_info(fd)
        self.type, self.key_size, self.value_size = info.type, info.key_size, info.value_size
        self.max_entries, self.name = info.max_entries, info.name.decode(errors="replace")
        self.percpu = self.type in PERCPU_TYPES
        self.ncpus = (ncpus or possible_cpus()) if self.percpu else 1
        self.slot = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size
        self._batch = True  # until the kernel says it has no batched lookup for this map

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _elem(self, cmd: int, key: bytes, value=None, flags: int = 0) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        # union bpf_attr: u32 map_fd, (pad), u64 key, u64 value|next_key, u64 flags
        attr = ctypes.create_string_buffer(struct.pack("<IIQQQ", self.fd, 0, _addr(k), _addr(value), flags), 32)
        _sys_bpf(cmd, attr)

    def lookup(self, key: bytes) -> bytes | None:
        """The raw value (all CPUs' copies for a per-CPU map), None when the key is absent."""
        v = ctypes.create_string_buffer(self.slot * self.ncpus)
        try:
            self._elem(MAP_LOOKUP_ELEM, key, v)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        v = ctypes.create_string_buffer(value, self.slot * self.ncpus)
        kernelwrite.record(kernelwrite.BPF_UPDATE, f"map fd {self.fd}", bytes(key) + bytes(value))
        self._elem(MAP_UPDATE_ELEM, key, v, flags)

    def delete(self, key: bytes) -> bool:
        kernelwrite.record(kernelwrite.BPF_DELETE, f"map fd {self.fd}", bytes(key))
        try:
            self._elem(MAP_DELETE_ELEM, key)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> list[bytes]:
        out = []
        nxt = ctypes.create_string_buffer(self.key_size)
        key = None
        while True:
            k = ctypes.create_string_buffer(key, self.key_size) if key is not None else None
            attr = ctypes.create_string_buffer(struct.pack("<IIQQQ", self.fd, 0, _addr(k), _addr(nxt), 0), 32)
            try:
                _sys_bpf(MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return out
                raise
            key = nxt.raw
            out.append(key)
            if len(out) > 4 * max(1, self.max_entries):  # keys deleted under us can restart the walk
                return out

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, raw value): one batched lookup per few thousand entries when the kernel
        can (BPF_MAP_LOOKUP_BATCH), else a lookup per key."""
        out = []
        ks, vs = self.key_size, self.slot * self.ncpus
        for keys, values, count in self.batches():
            out += [(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(count)]
        return out

    def batches(self):
        """Every entry, as (keys, values, count) chunks: `count` keys of key_size bytes one after
        the other, and their raw values (slot x ncpus bytes each) likewise -- what one
        BPF_MAP_LOOKUP_BATCH fills in, with no Python object per entry (a reader decodes a chunk
        with numpy); without batched lookups in the kernel, one chunk from a lookup per key."""
        if self._batch:
            given = 0
            try:
                for chunk in self._batches():
                    given += 1
                    yield chunk
                return
            except BpfError as e:
                # said by the first call, before any chunk (524: ENOTSUPP, kernel-internal)
                if given or e.errno not in (errno.EINVAL, errno.ENOTSUP, 524):
                    raise
                self._batch = False
        keys, values = [], []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:  # deleted meanwhile
                keys.append(k)
                values.append(v)
        yield b"".join(keys), b"".join(values), len(keys)

    def _batches(self):
        chunk = max(64, min(4096, self.max_entries))
        vsize = self.slot * self.ncpus
        token_in = ctypes.create_string_buffer(max(8, self.key_size))
        token_out = ctypes.create_string_buffer(max(8, self.key_size))
        first = True
        while True:
            keys = ctypes.create_string_buffer(chunk * self.key_size)
            values = ctypes.create_string_buffer(chunk * vsize)
            # union bpf_attr.batch: u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags, flags
            attr = ctypes.create_string_buffer(struct.pack(
                "<QQQQIIQQ", 0 if first else _addr(token_in), _addr(token_out), _addr(keys), _addr(values),
                chunk, self.fd, 0, 0), 56)
            done = False
            try:
                _sys_bpf(MAP_LOOKUP_BATCH, attr)
            except BpfError as e:
                if e.errno == errno.ENOSPC and chunk < 1 << 20:  # one hash bucket holds more than chunk
                    chunk *= 4
                    continue
                if e.errno != errno.ENOENT:
                    raise
                done = True
            count = struct.unpack_from("<I", attr.raw, 32)[0]
            if count:
                # the filled part only: a copy of count entries, not of the whole buffer
                yield (ctypes.string_at(keys, count * self.key_size), ctypes.string_at(values, count * vsize), count)
            if done:
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def percpu_values(self, raw: bytes) -> list[bytes]:
        """A per-CPU map's raw value -> each CPU's value_size bytes."""
        return [raw[i * self.slot:i * self.slot + self.value_size] for i in range(self.ncpus)]
