"""Source: /sys/kernel/debug/lru_gen, the multi-gen LRU's debugfs file (Linux >= 6.1, CONFIG_LRU_GEN).

Reading it gives, per memcg and NUMA node, one line per generation (oldest
first): sequence number, age in ms, anon pages, file pages. Writing
`+ memcg_id node_id max_seq can_swap force_scan` creates a new generation
(aging). Both are documented in Documentation/admin-guide/mm/multigen_lru.rst
("Experimental features"); the code is lru_gen_seq_show() and
lru_gen_seq_write()/run_cmd() in mm/vmscan.c.

`parse(text)` is pure. `age()` writes through the fs.Writer seam and turns
every kernel error into a counted reason, never an exception, because a memcg
vanishing between a read and a write is normal.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from itertools import accumulate, groupby
from operator import attrgetter, itemgetter
from typing import Callable

from mglrud import kernelwrite
from mglrud.config import Config
from mglrud.fs import FS, Writer
from mglrud.memory import gc_paused
from mglrud.sources.base import Inputs, Part, Passive, Probe
from mglrud.model.lru_gen import GenHistogram, Generation

NAME = "lru_gen"

# Every reason mglrud_aging_errors_total{reason} can carry, so all series exist from the start.
REASONS = ("einval", "erange", "enoent", "eperm", "memcg_gone", "no_debugfs", "other")

# "memcg %5hu %s": the path is the rest of the line and may contain spaces; it is
# empty for the root when memcg is disabled (cgroup_disable=memory).
_MEMCG = re.compile(r"memcg +(\d+) ?(.*)")
_NODE = re.compile(r" node +(\d+)")
# Generation(...) without the NamedTuple's Python-level __new__: tens of thousands a read
_tuple_new = tuple.__new__
_anon, _file = itemgetter(2), itemgetter(3)  # Generation.anon_pages, .file_pages
_memcg_key, _node = attrgetter("memcg_id", "memcg_path"), attrgetter("node")


class ParseError(ValueError):
    pass


class Unavailable(Exception):
    """lru_gen cannot be read; the message says what to do about it, `reason` is one of REASONS."""

    def __init__(self, message: str, reason: str = "other"):
        super().__init__(message)
        self.reason = reason


def parse(text: str) -> tuple[GenHistogram, ...]:
    """lru_gen or lru_gen_full text -> one GenHistogram per (memcg, node), in file order.

    Read every cycle, so the common line (a generation) is recognised first, by split()
    alone. (A regex-per-node fast path, and one converting all generation lines at once by
    columns, measured no faster: building the generations dominates.) Without the cyclic
    collector, which has nothing to free here (memory.gc_paused())."""
    with gc_paused():
        return _parse(text)


def _parse(text: str) -> tuple[GenHistogram, ...]:
    out: list[GenHistogram] = []
    memcg: tuple[int, str] | None = None
    node: int | None = None
    gens: list[Generation] = []

    last = -1  # the latest generation's seq in this lruvec
    # " node     0" -> 0: a few distinct lines, each thousands of times (a regex each was a sixth
    # of the parse)
    node_lines: dict[str, int] = {}
    n: int | None = None

    def flush() -> None:
        if memcg is not None and node is not None:
            if not gens:
                raise ParseError(f"memcg {memcg[0]} node {node} has no generations")
            out.append(GenHistogram(memcg[0], memcg[1], node, tuple(gens)))

    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        # A generation: "seq age_ms anon file", counts marked 'x' in lru_gen_full when
        # seq is below that type's min_seq. Tried first: all but one line in four are these
        # (a memcg line starts with "memcg", a node line with "node": never digits).
        if len(words) == 4 and words[0].isdigit() and words[1].isdigit():
            if node is None:
                raise ParseError(f"line {lineno}: generation before any node line")
            try:
                anon, file = int(words[2]), int(words[3])
            except ValueError:
                try:
                    anon, file = int(words[2].rstrip("x")), int(words[3].rstrip("x"))
                except ValueError:
                    raise ParseError(f"line {lineno}: cannot read page counts in {line.strip()!r}") from None
            seq = int(words[0])
            if seq <= last and gens:
                raise ParseError(f"line {lineno}: generation {seq} after {last}")
            gens.append(_tuple_new(Generation, (seq, int(words[1]) / 1000.0, anon, file)))
            last = seq
            continue
        if not words:
            continue
        if line.startswith("memcg"):
            # _MEMCG's reading (spaces, the id, one space, the path), without a regex per memcg
            memcg_id, _, path = line[6:].lstrip(" ").partition(" ")
            if line[5:6] == " " and memcg_id.isdecimal():
                flush()
                memcg, node, gens = (int(memcg_id), path or "/"), None, []
                continue
            if m := _MEMCG.fullmatch(line):
                flush()
                memcg, node, gens = (int(m.group(1)), m.group(2) or "/"), None, []
                continue
        if words[0] == "node" and ((n := node_lines.get(line)) is not None
                                   or (m := _NODE.fullmatch(line.rstrip()))):
            if memcg is None:
                raise ParseError(f"line {lineno}: node before any memcg line")
            flush()
            if n is None:
                n = node_lines[line] = int(m.group(1))
            node, gens = n, []
            continue
        # lru_gen_full only: per-tier refault stats (tier + 6 marked numbers) and
        # mm-walk stats (4 marked numbers). mglrud does not use them.
        if (len(words) == 7 and words[0].isdigit()) or (len(words) == 4 and not words[0].isdigit()):
            continue
        raise ParseError(f"line {lineno}: unexpected {line.strip()!r}")
    flush()
    return tuple(out)


def reparse(text: str, previous: tuple[GenHistogram, ...], fresh: set[str]) -> tuple[GenHistogram, ...]:
    """parse(text) for a read taken just after aging `fresh` (memcg paths), `previous` being
    the read before it: every memcg in `fresh`, and every one not in `previous` under the same
    id, is parsed from `text`; the others keep their lruvecs from `previous`. In `text`'s order.

    Why: lru_gen was parsed whole before and after aging, most of a cycle at thousands of
    memcgs, while a wake-up ages a few of them (aging.WAKEUPS groups an interval). What the
    others keep is the read of a moment earlier (before the aging writes), as good as the
    snapshot's own age. Text that does not split cleanly into memcg sections, or more than
    half of it fresh, is parsed whole.

    The common case -- the same memcgs as the read before, in the same order -- is found and
    spliced without a Python step per memcg that is kept (_splice()); any other case takes
    the general way (_reparse())."""
    if len(fresh) * 2 > len(set(map(_path, previous))) or not text.startswith("memcg ") \
            or (_other_line_breaks(text) and len(text.splitlines()) != text.count("\n") + (not text.endswith("\n"))):
        return parse(text)  # (a line break other than \n: the sections would not be parse()'s lines)
    sections = text[len("memcg "):].split("\nmemcg ")
    spliced = _splice(sections, previous, fresh)
    return spliced if spliced is not None else _reparse(text, sections, previous, fresh)


_path = attrgetter("memcg_path")
# What str.splitlines() breaks a line at besides \n. Without them (the kernel writes none) the
# text's lines are its \n-separated ones, known without a splitlines() of the whole text: a
# search for one character is a memchr(), a regex scan of a MiB of lru_gen took milliseconds.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _other_line_breaks(text: str) -> bool:
    return any(c in text for c in (_LINE_BREAKS[:6] if text.isascii() else _LINE_BREAKS))


def _splice(sections: list[str], previous: tuple[GenHistogram, ...], fresh: set[str]
            ) -> tuple[GenHistogram, ...] | None:
    """reparse() when the text lists the memcgs of `previous` in its order, each once, each
    node once, and each header as the kernel prints it ("memcg %5hu %s": _reparse() reads it
    as the same id and path); None otherwise."""
    prev_keys = list(map(_memcg_key, previous))
    runs = [(key, len(list(group))) for key, group in groupby(prev_keys)]  # a memcg's lruvecs are consecutive
    if len(runs) != len(sections) or len(set(prev_keys)) != len(runs) \
            or len(set(zip(prev_keys, map(_node, previous)))) != len(previous):
        return None
    if [section.partition("\n")[0] for section in sections] != [f"{i:5d} {path}" for (i, path), _ in runs]:
        return None
    parse_these = [i for i, (key, _) in enumerate(runs) if key[1] in fresh]
    if not parse_these:
        return tuple(previous)  # (the same tuple: nothing to copy)
    parsed = parse("".join(f"memcg {sections[i]}" if sections[i].endswith("\n") else f"memcg {sections[i]}\n"
                           for i in parse_these))
    starts = list(accumulate((n for _, n in runs), initial=0))  # section i's lruvecs: previous[starts[i]:starts[i + 1]]
    out: list[GenHistogram] = []
    kept_from = j = 0
    for i in parse_these:
        out += previous[starts[kept_from]:starts[i]]
        key = runs[i][0]
        while j < len(parsed) and (parsed[j].memcg_id, parsed[j].memcg_path) == key:
            out.append(parsed[j])
            j += 1
        kept_from = i + 1
    out += previous[starts[kept_from]:]
    return tuple(out)


def _reparse(text: str, sections: list[str], previous: tuple[GenHistogram, ...], fresh: set[str]) -> tuple[GenHistogram, ...]:
    """reparse(), any case: sections added, gone, moved or listed twice."""
    keyed = []
    for section in sections:
        # _MEMCG's reading of "memcg" + header: spaces, the id's digits, one space, the path
        memcg_id, _, path = section.partition("\n")[0].lstrip(" ").partition(" ")
        if not memcg_id.isdecimal():
            return parse(text)
        keyed.append(((int(memcg_id), path or "/"), section))
    kept: dict[tuple[int, str], list[GenHistogram]] = {}
    twice: set[tuple[int, str]] = set()  # listed twice under one id and path (dying twins, id 0): parsed
    for key, group in groupby(previous, _memcg_key):  # a memcg's lruvecs are consecutive
        hs = list(group)
        if key in kept or (len(hs) > 1 and len(set(map(_node, hs))) != len(hs)):
            twice.add(key)
        kept[key] = hs
    seen: set[tuple[int, str]] = set()
    for key, _ in keyed:
        if key in seen:
            twice.add(key)
        seen.add(key)
    parse_these = [key[1] in fresh or key not in kept or key in twice for key, _ in keyed]
    # the sections to parse, parsed together (one call, not one per section), then taken
    # back in order: a section's lruvecs are the next ones under its key
    parsed = parse("".join(f"memcg {section}" if section.endswith("\n") else f"memcg {section}\n"
                           for (key, section), p in zip(keyed, parse_these) if p)) if any(parse_these) else ()
    out: list[GenHistogram] = []
    i = 0
    for (key, _), p in zip(keyed, parse_these):
        if not p:
            out += kept[key]
            continue
        while i < len(parsed) and (parsed[i].memcg_id, parsed[i].memcg_path) == key:
            out.append(parsed[i])
            i += 1
    return tuple(out)


def read_text(fs: FS) -> str:
    try:
        # memcg names are any bytes but '/' (a tenant names its delegated cgroups): a byte that
        # is not UTF-8 is kept as \xNN, the same spelling targets.py gives /proc/PID/cgroup
        return fs.lru_gen.read_bytes().decode("utf-8", "backslashreplace")
    except FileNotFoundError:
        raise Unavailable(
            f"{fs.lru_gen} does not exist: mount debugfs (mount -t debugfs none {fs.paths.debugfs}) "
            f"on a kernel built with CONFIG_LRU_GEN=y", "no_debugfs") from None
    except PermissionError:
        raise Unavailable(f"{fs.lru_gen} is not readable: run mglrud as root", "eperm") from None
    except OSError as e:
        raise Unavailable(f"cannot read {fs.lru_gen}: {e.strerror}") from None


def read(fs: FS, previous: tuple[GenHistogram, ...] = (), fresh: set[str] | None = None
         ) -> tuple[GenHistogram, ...]:
    """lru_gen, parsed; with `fresh`: read just after aging those memcgs (see reparse())."""
    text = read_text(fs)
    try:
        return parse(text) if fresh is None else reparse(text, previous, fresh)
    except ParseError as e:
        raise Unavailable(f"cannot parse {fs.lru_gen}: {e}") from None


def aging_command(memcg_id: int, node: int, max_seq: int, can_swap: bool, force_scan: bool) -> str:
    return f"+ {memcg_id} {node} {max_seq} {int(can_swap)} {int(force_scan)}"


@dataclass(frozen=True)
class AgingResult:
    memcg_path: str
    node: int
    reason: str  # "" on success, else one of REASONS
    duration: float  # seconds spent in the write(s): the kernel's page-table walk
    commands: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reason


def _reason(e: OSError) -> str:
    return {errno.EINVAL: "einval", errno.ERANGE: "erange", errno.ENOENT: "enoent",
            errno.EPERM: "eperm", errno.EACCES: "eperm"}.get(e.errno, "other")


def age(lruvec: GenHistogram, writer: Writer, reread: Callable[[], tuple[GenHistogram, ...]],
        can_swap: bool, force_scan: bool, clock: Callable[[], float] = time.monotonic) -> AgingResult:
    """Create a new generation for one lruvec whose max_seq came from a fresh read.

    The kernel answers EINVAL when max_seq is not current (or the memcg id is no
    longer valid): re-read once, and retry if the same memcg is still there.
    """
    commands = []
    start = clock()
    current = lruvec
    for attempt in range(2):
        cmd = aging_command(current.memcg_id, current.node, current.max_seq, can_swap, force_scan)
        commands.append(cmd)
        try:
            writer.write(cmd)
            reason = ""
        except OSError as e:
            reason = _reason(e)
        if reason != "einval" or attempt:
            break
        try:
            fresh = {(h.memcg_id, h.node): h for h in reread()}
        except Unavailable:
            reason = "no_debugfs"
            break
        again = fresh.get((lruvec.memcg_id, lruvec.node))
        # Ids are reused: the same id under another path is another memcg.
        if again is None or again.memcg_path != lruvec.memcg_path:
            reason = "memcg_gone"
            break
        current = again
    return AgingResult(lruvec.memcg_path, lruvec.node, reason, clock() - start, tuple(commands))


def enabled_value(fs: FS) -> int | None:
    """/sys/kernel/mm/lru_gen/enabled as a number (bit 0: MGLRU on), None when it cannot be read."""
    try:
        return int(fs.sys("kernel", "mm", "lru_gen", "enabled").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def how_to_enable(fs: FS) -> str:
    return (f"set lru_gen.enable: true in the config, or echo y > {fs.sys('kernel', 'mm', 'lru_gen', 'enabled')} "
            f"(either changes how the whole machine reclaims memory)")


def switch_on(fs: FS) -> str:
    """`lru_gen.enable: true`: write `y` to lru_gen/enabled when MGLRU is compiled in but off.
    The only place mglrud writes that file. Returns what it did, for the log."""
    path = fs.sys("kernel", "mm", "lru_gen", "enabled")
    value = enabled_value(fs)
    if value is None:
        return f"lru_gen.enable: {path} cannot be read: the kernel has no CONFIG_LRU_GEN; nothing switched on"
    if value & 0x1:
        return ""
    try:
        with open(path, "w") as f:
            kernelwrite.record(kernelwrite.LRU_GEN_ENABLED, str(path), b"y")
            f.write("y")
    except OSError as e:
        return f"lru_gen.enable: cannot write {path}: {e.strerror}; MGLRU stays off"
    return f"lru_gen.enable: MGLRU was off ({value:#06x}); wrote y to {path}"


def probe(fs: FS) -> Probe:
    enabled = fs.sys("kernel", "mm", "lru_gen", "enabled")
    try:
        lruvecs = read(fs)
    except Unavailable as e:
        if not enabled.exists():
            return Probe("lru_gen", False, f"{enabled} missing: the kernel is built without CONFIG_LRU_GEN "
                                           f"(no multi-gen LRU)")
        return Probe("lru_gen", False, str(e))
    value = enabled_value(fs)
    # Compiled in but off (Debian 12's kernel): debugfs lru_gen still lists memcgs and takes aging
    # commands, but the pages are on the classic LRU, so its generations say nothing.
    if value is not None and not value & 0x1:
        return Probe("lru_gen", False, f"MGLRU is compiled in but off ({enabled} is {value:#06x}): "
                                       f"{how_to_enable(fs)}")
    return Probe("lru_gen", True, f"{fs.lru_gen} readable ({len({h.memcg_id for h in lruvecs})} memcgs)")


class LruGenSource(Passive):
    """The generations of the target memcgs. lru_gen is read once per cycle, before and again
    after aging, by the Engine (it is also what the Engine ages through): this source only
    picks the target memcgs' lruvecs out of that read, less what the cardinality controls
    leave out (select(), metrics.max_memcgs_per_target and metrics.keep_empty_memcgs)."""

    name = NAME

    @classmethod
    def make(cls, config: Config, fs: FS, clock, wall) -> "LruGenSource":
        return cls()

    def configure(self, config: Config, probe: Probe, why: str) -> None:
        pass

    def part(self, inputs: Inputs) -> Part:
        index = inputs.index
        # .get: a memcg that went offline since the first read is no longer in the index.
        picked = tuple(h for h in inputs.lruvecs if h.memcg_path in inputs.owner
                       and index.get(h.memcg_path) == h.memcg_id)
        m = inputs.config.metrics
        owner = {path: t.name for path, t in inputs.owner.items()}
        kept, dropped = select(picked, owner, m.max_memcgs_per_target, m.keep_empty_memcgs)
        return Part(data={"lruvecs": kept, "memcgs_dropped": dropped})


def select(lruvecs: tuple[GenHistogram, ...], owner: dict[str, str], cap: int, keep_empty: bool
           ) -> tuple[tuple[GenHistogram, ...], tuple[tuple[str, str, int], ...]]:
    """The cardinality controls on memcgs (docs/fleet.md): the lruvecs to export, and
    (target, reason, memcgs) left out. A memcg goes whole (every node) or not at all.

    reason "empty": no page on any LRU of any node (unless keep_empty) -- the default
    target /** matches every memcg of the host, most of them empty on a busy machine.
    reason "max_memcgs": beyond `cap` per target (0: no cap), keeping the largest by
    resident pages (ties by path, so the choice is stable between snapshots).

    This is data reduction, done here rather than in the collectors: the memcgs left out
    are still aged (aging sees every target memcg), but the Snapshot, /snapshot.json and
    the rendered text do not carry them, so a 10k-memcg host costs 10k lruvecs once per
    cycle and not in every consumer of the Snapshot.
    """
    pages: dict[str, int] = {}
    for h in lruvecs:  # h.pages("anon") + h.pages("file"), summed in C: it runs per lruvec per cycle
        pages[h.memcg_path] = (pages.get(h.memcg_path, 0) + sum(map(_anon, h.generations))
                               + sum(map(_file, h.generations)))
    by_target: dict[str, list[str]] = {}
    for path in pages:
        by_target.setdefault(owner.get(path, ""), []).append(path)
    keep: set[str] = set()
    dropped = []
    for target, paths in sorted(by_target.items()):
        empty = 0
        if not keep_empty:
            empty = sum(1 for p in paths if not pages[p])
            paths = [p for p in paths if pages[p]]
        paths.sort(key=lambda p: (-pages[p], p))
        over = paths[cap:] if cap else []
        keep.update(paths[:cap] if cap else paths)
        dropped += [(target, "empty", empty), (target, "max_memcgs", len(over))]
    return tuple(h for h in lruvecs if h.memcg_path in keep), tuple(dropped)
