"""YAML read with bounded work: the config file (config.py) and the web config (webconfig.py).

A config file is input from whoever can write it, and mglrud runs as root: the
file must be a regular file of bounded size (a FIFO or /dev/zero is refused at
once), its nesting is checked on the parser's events before anything recursive
runs, its size with aliases expanded is counted over the node graph ("billion
laughs"), duplicate and unhashable keys are errors, and an integer too long to
convert is never converted. Every refusal is an exception with one sentence;
the callers add the file name or key.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml

MAX_CONFIG_BYTES = 256 << 10
MAX_DEPTH = 32  # nesting of lists and mappings, aliases expanded; mglrud's own schema needs 4
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded ("billion laughs")
MAX_INT_DIGITS = 40  # a longer integer is shown by its length, never converted (int() limits at 4300)


class Refused(Exception):
    """The file cannot be a config file; the message says why (without the path)."""


# libyaml's parser when PyYAML has it (Debian's does): 4x faster than the pure-Python one, and
# its composer recurses in C, so nesting is bounded by the event pass below before it runs.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_BaseLoader):
    """SafeLoader that refuses duplicate and unhashable keys instead of keeping the last one or
    raising TypeError, and that never converts an integer longer than MAX_INT_DIGITS."""


class _Huge:
    """An integer too long to convert (Python refuses beyond 4300 digits, and no key wants one):
    validation refuses it like any value of the wrong type, and messages show only its length."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"

    __str__ = __repr__


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.MarkedYAMLError(problem="a list or mapping cannot be a key here",
                                       problem_mark=k.start_mark) from None
        if key in seen:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    value = loader.construct_scalar(node)
    if len(value) > MAX_INT_DIGITS:
        body = value.replace("_", "").lstrip("+-")
        prefix = 2 if body[:2].lower() in ("0x", "0o", "0b") else 0
        return _Huge(sum(c.isalnum() for c in body[prefix:]))
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
StrictLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


class TooBig(Exception):
    pass


def _check_events(text: str) -> bool:
    """Walk the parser's events (libyaml's parser keeps a stack, it does not recurse) and
    refuse nesting deeper than MAX_DEPTH before anything recursive sees the document.
    Returns whether the document uses aliases."""
    depth, aliases = 0, False
    loader = _BaseLoader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise TooBig(f"nested deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}, "
                                  f"column {event.start_mark.column + 1}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases = True
    finally:
        loader.dispose()
    return aliases


def _check_graph(root: yaml.Node, aliases: bool) -> None:
    """Size and depth of the document with every alias expanded, counted over the node graph
    with each shared node counted once per use (memoised, not expanded): a billion-laughs
    document is refused here, in time proportional to its text. Iterative, so no
    RecursionError; an alias to an enclosing node (a cycle) is refused too."""
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [x for pair in node.value for x in pair]
        return ()

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            open_.discard(nid)
            kids = children(node)
            size[nid] = 1 + sum(size[id(c)] for c in kids)
            depth[nid] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[nid] > MAX_VALUES:
                raise TooBig(f"YAML aliases expand to more than {MAX_VALUES} values (an alias bomb?)" if aliases
                              else f"holds more than {MAX_VALUES} values: not a config file?")
            if depth[nid] > MAX_DEPTH:
                raise TooBig(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded")
            continue
        if nid in size:
            continue
        if nid in open_:
            raise TooBig(f"an alias at line {node.start_mark.line + 1} refers to itself (a recursive document)")
        open_.add(nid)
        stack.append((node, True))
        for c in children(node):
            if id(c) in open_:
                raise TooBig(f"an alias at line {node.start_mark.line + 1} refers to itself (a recursive document)")
            if id(c) not in size:
                stack.append((c, False))


def parse(text: str) -> Any:
    """YAML text -> Python values, in bounded time and memory (see the MAX_* bounds)."""
    aliases = _check_events(text)
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, aliases)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def read_text(path: str) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. Opened non-blocking, so a FIFO
    is refused at once rather than waited on; /dev/zero is refused before a byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise Refused(f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Refused("cannot read: Is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "an unknown kind of file")
            raise Refused(f"is not a regular file ({kind})")
        limit = f"is larger than {MAX_CONFIG_BYTES >> 10} KiB"
        if st.st_size > MAX_CONFIG_BYTES:
            raise Refused(f"{limit} ({st.st_size} bytes): not a config file?")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:  # the file may grow while it is read
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise Refused(f"{limit}: not a config file?")
    except OSError as e:
        raise Refused(f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise Refused(f"is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None
    if text.strip() and not text.endswith("\n"):
        raise Refused("does not end with a newline: truncated, or still being written?")
    return text
