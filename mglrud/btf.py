"""Member offsets of kernel structs, read from the kernel's BTF (/sys/kernel/btf/vmlinux).

BTF is the kernel's own type information (CONFIG_DEBUG_INFO_BTF; the format is
Documentation/bpf/btf.rst, include/uapi/linux/btf.h): a header, a type section of
variable-length records, and a string section. This module only finds the byte
offset of a member of a named struct, a struct's size and an enumerator's value, so
that bpf/hotness.bpf.c can read the fields it needs without including the headers that
define them: the tracepoint program reads task_struct.flags (its harvester), and
parsing linux/sched.h was two thirds of bcc's compile of it (measured in the TCG test
guest: 153-170 s with it, 51 s without, at the same host load); the stock kernel's
probe reads a dozen members of mm, task, cgroup and page structs. Pure functions over the bytes; the caller reads the file.
"""

from __future__ import annotations

import struct

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
TYPE = struct.Struct("<III")  # name_off, info, size/type
MEMBER = struct.Struct("<III")  # name_off, type, offset
ENUM = struct.Struct("<Ii")  # name_off, val

# kind -> bytes that follow struct btf_type: fixed, and per vlen entry (include/uapi/linux/btf.h)
KIND_INT, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG = 8, 9, 10, 11, 18
_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
          9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0),
          17: (4, 0), 18: (0, 0), 19: (0, 12)}


class BtfError(ValueError):
    """Not BTF, or no such struct or member; the message says which."""


class _Types:
    """The type section, decoded as far as asked: struct btf_type records in id order
    (ids from 1), each (name_off, kind, kind_flag, vlen, where its vlen records start, size
    or type). Scanning stops at the struct looked for: task_struct is type 114 of 126585 in
    a 6.18 kernel's BTF, and a full scan takes ~0.1 s of CPU on hardware, seconds under TCG."""

    def __init__(self, data: bytes):
        if len(data) < HEADER.size:
            raise BtfError("too short for a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}, want {MAGIC:#x})")
        if hdr_len + type_off + type_len > len(data) or hdr_len + str_off + str_len > len(data):
            raise BtfError("truncated BTF (sections end past the data)")
        self.data = data
        self.strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self.pos, self.end = hdr_len + type_off, hdr_len + type_off + type_len
        self.types: list[tuple[int, int, int, int, int, int]] = []

    def _next(self) -> bool:
        if self.pos >= self.end:
            return False
        name_off, info, ref = TYPE.unpack_from(self.data, self.pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        try:
            fixed, each = _EXTRA[kind]
        except KeyError:
            raise BtfError(f"unknown BTF kind {kind} at byte {self.pos}") from None
        self.pos += TYPE.size
        self.types.append((name_off, kind, info >> 31, vlen, self.pos + fixed, ref))
        self.pos += fixed + each * vlen
        return True

    def get(self, tid: int):
        while len(self.types) < tid and self._next():
            pass
        return self.types[tid - 1] if 0 < tid <= len(self.types) else None

    def find_struct(self, name: bytes) -> int | None:
        tid = 1
        while (t := self.get(tid)) is not None:
            if t[1] == KIND_STRUCT and t[0] and self.name(t[0]) == name:
                return tid
            tid += 1
        return None

    def name(self, off: int) -> bytes:
        return self.strings[off:self.strings.index(b"\0", off)]


def struct_size(data: bytes, struct_name: str) -> int:
    """sizeof(struct STRUCT_NAME)."""
    types = _Types(data)
    tid = types.find_struct(struct_name.encode())
    if tid is None:
        raise BtfError(f"no struct {struct_name} in the kernel's BTF")
    return types.get(tid)[5]


def enum_value(data: bytes, enumerator: str) -> int:
    """The value of the enumerator ENUMERATOR (of any enum: they share C's one namespace)."""
    types = _Types(data)
    want = enumerator.encode()
    tid = 1
    while (t := types.get(tid)) is not None:
        name_off, kind, _kf, vlen, pos, _size = t
        if kind == KIND_ENUM:
            for i in range(vlen):
                e_name, value = ENUM.unpack_from(data, pos + i * ENUM.size)
                if types.name(e_name) == want:
                    return value
        tid += 1
    raise BtfError(f"no enumerator {enumerator} in the kernel's BTF")


def member_offset(data: bytes, struct_name: str, member: str) -> int:
    """Byte offset of MEMBER in `struct STRUCT_NAME`, looking through anonymous struct and
    union members (task_struct's fields sit in a randomized-layout group on some configs)."""
    types = _Types(data)
    tid = types.find_struct(struct_name.encode())
    if tid is None:
        raise BtfError(f"no struct {struct_name} in the kernel's BTF")
    found = _find(types, tid, member.encode())
    if found is None:
        raise BtfError(f"struct {struct_name} has no member {member} in the kernel's BTF")
    bits, bitfield = found
    if bitfield or bits % 8:
        raise BtfError(f"{struct_name}.{member} is a bitfield (bit offset {bits})")
    return bits // 8


def _find(types: _Types, tid: int, member: bytes, depth: int = 0) -> tuple[int, int] | None:
    """(bit offset, bitfield size or 0) of MEMBER in the struct/union type TID, anonymous
    members searched too."""
    t = types.get(tid)
    if t is None or t[1] not in (KIND_STRUCT, KIND_UNION) or depth > 8:
        return None
    _name_off, _kind, kind_flag, vlen, pos, _size = t
    for i in range(vlen):
        m_name, m_type, m_off = MEMBER.unpack_from(types.data, pos + i * MEMBER.size)
        bits, bitfield = (m_off & 0xFFFFFF, m_off >> 24) if kind_flag else (m_off, 0)
        if m_name and types.name(m_name) == member:
            return bits, bitfield
        if not m_name:
            inner = _find(types, _strip(types, m_type), member, depth + 1)
            if inner is not None:
                return bits + inner[0], inner[1]
    return None


def _strip(types: _Types, tid: int) -> int:
    """Through typedefs and qualifiers to the type they name (0: void or unknown)."""
    for _ in range(16):
        t = types.get(tid)
        if t is None:
            return 0
        if t[1] not in (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG):
            return tid
        tid = t[5]
    return 0
