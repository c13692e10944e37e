"""/metrics bodies: the Prometheus text format 0.0.4 or OpenMetrics 1.0, plain or gzip, rendered once per snapshot.

Formats: https://prometheus.io/docs/instrumenting/exposition_formats/ (text
0.0.4) and https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md;
the encoders are client_python's (prometheus_client.exposition /
prometheus_client.openmetrics.exposition), and content negotiation follows its
choose_encoder() and gzip_accepted(): OpenMetrics when the Accept header names
application/openmetrics-text, gzip when Accept-Encoding names gzip.

A body is three parts, in this order:

1. per scrape: mglrud_build_info and mglrud_snapshot_age_seconds (the age changes every second);
2. the snapshot's families, rendered ONCE per published Snapshot by `render_pieces(snapshot,
   openmetrics)` and kept in pieces (with its raw-deflate form for gzip) until another snapshot is published;
   concurrent scrapes of a new snapshot wait for the one render instead of each doing it;
3. per scrape: the extra collectors (config reload state, process_*), then `# EOF` for OpenMetrics.

The daemon's loop renders part 2 ahead, when it publishes a snapshot, in the variants scrapes
asked for lately and expect to read it (Exposition.prepare()), so that a scrape finds it made.

Text 0.0.4 is a plain concatenation of families, so parts 1+2 are byte for byte what
generate_latest(build_registry(...)) gives (tests/unit/test_exposition.py checks it on
every fixture). gzip is one gzip member whose deflate stream is the three parts'
independent raw deflate streams joined at byte-aligned sync-flush points (RFC 1951 3.2.4:
a non-final block ends the stream only when BFINAL is set), so the big middle part is
compressed once per snapshot, and only the small ends and a CRC-32 are computed per scrape (the
middle's CRC once, combined with the head's: crc32_zeros()); the cache keeps the middle's text
only while a scrape without gzip is expected to read it before the next publish.
"""

from __future__ import annotations

import struct
import threading
import time
import weakref
import zlib
from typing import Callable, Iterable, NamedTuple

from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as om_format

from mglrud import collectors, memory
from mglrud.collectors import Published, selfmetrics

TEXT = text_format.CONTENT_TYPE_LATEST
OPENMETRICS = om_format.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"

# selfmetrics' families that change between scrapes of one snapshot; every other family
# collectors.families() yields depends on the snapshot alone.
PER_SCRAPE = ("mglrud_build_info", "mglrud_snapshot_age_seconds")
# gzip level: the cached part is compressed once per snapshot. On /metrics text (22 MB at
# 3,000 memcgs) level 3 takes 73 ms where zlib's default 6 takes 196 ms, for 13 % more bytes
# (2.1 vs 1.9 MB): deflate's fast strategy (levels 1-3) against the lazy one. The render is
# the daemon's largest cost beside its cycle (bench/scale.py, "the daemon's share"), and
# the bytes go to a Prometheus on the same network.
GZIP_LEVEL = 3


class _Families:
    """What client_python's encoders need from a registry: collect()."""

    def __init__(self, families):
        self._families = list(families)

    def collect(self):
        return self._families


# ---------------------------------------------------------------- the seam to collectors/

def scrape_families(snapshot, wall: Callable[[], float]) -> list:
    """Part 1: the families that change between scrapes of one snapshot."""
    out = []
    for f in selfmetrics.families(snapshot, wall()):  # lazy: stop before the snapshot's own families
        if f.name in PER_SCRAPE:
            out.append(f)
            if len(out) == len(PER_SCRAPE):
                break
    return out


def snapshot_families(snapshot) -> list:
    """Part 2: every family derived from the snapshot alone, in /metrics order (collectors.families')."""
    return [f for f in collectors.families(snapshot, snapshot.taken_at) if f.name not in PER_SCRAPE]


def encode(families: Iterable, openmetrics: bool) -> bytes:
    """Families in one format, without OpenMetrics' closing `# EOF`."""
    if not openmetrics:
        return text_format.generate_latest(_Families(families))
    out = om_format.generate_latest(_Families(families))
    return out[:-len(_EOF)] if out.endswith(_EOF) else out


def render_pieces(snapshot, openmetrics: bool = False) -> list[bytes]:
    """Part 2 in pieces, in order: what the cache keeps per snapshot and format (a plain
    scrape's body is written piece after piece, and deflate and CRC-32 run over them in turn:
    never joined, so no second copy of ~22 MB at 3,000 memcgs, and no fresh mapping of it to
    fault in). The per-memcg families and the info family are written directly
    (collectors/memcg.py, collectors/workload.py: client_python's per-sample path was ~10 us a
    series, and they are nearly all of them); the others by client_python. Joined, the bytes
    are the same as encode(snapshot_families(snapshot)) (tests/unit/test_exposition.py)."""
    chunks: list[bytes] = []
    pending: list = []
    for f in collectors.families(snapshot, snapshot.taken_at, direct=True):
        if isinstance(f, collectors.Text):
            chunks += [encode(pending, openmetrics), *f.render(openmetrics)]
            pending = []
        elif f.name not in PER_SCRAPE:
            pending.append(f)
    chunks.append(encode(pending, openmetrics))
    return [c for c in chunks if c]


def render_snapshot(snapshot, openmetrics: bool = False) -> bytes:
    """Part 2 as one bytes (render_pieces(), joined)."""
    return b"".join(render_pieces(snapshot, openmetrics))


def _pieces(text) -> list[bytes]:
    """A render's result as pieces: a render function may give one bytes (tests do)."""
    return [text] if isinstance(text, (bytes, bytearray)) else text


# ---------------------------------------------------------------- negotiation

def wants_openmetrics(accept: str | None) -> bool:
    return text_format.choose_encoder(accept or "")[1] == OPENMETRICS


def wants_gzip(accept_encoding: str | None) -> bool:
    return text_format.gzip_accepted(accept_encoding or "")


# ---------------------------------------------------------------- gzip in parts

def _deflate(data: bytes | list[bytes], final: bool) -> bytes:
    """One raw deflate stream (no zlib header) of data, or of its pieces in turn: zlib's
    output does not depend on how its input is cut (tests/unit/test_exposition.py)."""
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    out = [c.compress(piece) for piece in _pieces(data)]
    out.append(c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH))
    return b"".join(out)


# RFC 1952: ID1 ID2, CM=8 (deflate), FLG=0, MTIME=0 (none), XFL=0, OS=255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class Deflated(NamedTuple):
    """The snapshot's part 2 as gzip needs it: its raw deflate stream (ending in a sync flush),
    its CRC-32 and length, and crc32_zeros(length). Without the text: a scrape asking for gzip
    (Prometheus does) needs none of it, so the cache need not keep 20 MiB of it at 3,000 memcgs."""

    stream: bytes
    crc: int
    size: int
    zeros: tuple[int, ...]

    @classmethod
    def of(cls, middle: bytes | list[bytes]) -> "Deflated":
        crc = size = 0
        for piece in _pieces(middle):
            crc, size = zlib.crc32(piece, crc), size + len(piece)
        return cls(_deflate(middle, False), crc, size, crc32_zeros(size))


def gzip_parts(head: bytes, middle: Deflated, tail: bytes) -> bytes:
    """One gzip member of head + the middle's text + tail."""
    # crc32(head + text) = the head's CRC carried over the text's length of zeros, xor the
    # text's own CRC (zlib's crc32_combine()); then on over tail
    crc = zlib.crc32(tail, _gf2_times(middle.zeros, zlib.crc32(head)) ^ middle.crc)
    size = len(head) + middle.size + len(tail)
    return b"".join((_GZIP_HEADER, _deflate(head, False), middle.stream, _deflate(tail, True),
                     struct.pack("<II", crc, size & 0xFFFFFFFF)))


# ---------------------------------------------------------------- CRC-32 of a concatenation

def _gf2_times(matrix, vector: int) -> int:
    """A 32x32 matrix over GF(2) (one int per column) times a 32-bit vector."""
    out = i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix) -> list[int]:
    return [_gf2_times(matrix, column) for column in matrix]


def crc32_zeros(length: int) -> tuple[int, ...]:
    """The map that carries a CRC-32 over `length` zero bytes, as a matrix for _gf2_times():
    crc32(a + b) == _gf2_times(crc32_zeros(len(b)), crc32(a)) ^ crc32(b). zlib's
    crc32_combine() (crc32.c, before 1.2.12), with the operator kept instead of applied once:
    a render's part 2 is one length, then combined with a new head at every scrape.
    About a millisecond per doubling of the length; the powers commute, so order is free."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit (the CRC-32 polynomial)
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    op = [1 << n for n in range(32)]  # nothing yet: the identity
    while length:
        even = _gf2_square(odd)  # first one zero byte, then each square doubles it
        if length & 1:
            op = [_gf2_times(even, column) for column in op]
        length >>= 1
        if not length:
            break
        odd = _gf2_square(even)
        if length & 1:
            op = [_gf2_times(odd, column) for column in op]
        length >>= 1
    return tuple(op)


# ---------------------------------------------------------------- the cache

class _Slot:
    __slots__ = ("lock", "value", "made")

    def __init__(self):
        self.lock = threading.Lock()
        self.value = None
        self.made = 0  # renders into this slot: which one a pending let-go is for


def _timer(seconds: float, fn: Callable[[], None]) -> None:
    """Run fn in `seconds`, on a daemon thread of its own."""
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()


def _weak(obj):
    """A weak reference to obj; None for None or an object that takes none."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


class RenderCache:
    """Rendered bytes of ONE snapshot (the latest asked for), per variant, made on first demand.

    Keyed on the Snapshot object itself (snapshots are immutable and replaced, never
    changed): a new object drops every variant of the old one. The one it replaced is
    remembered weakly: a late scrape of it (it read the published snapshot just before the
    loop published and rendered the next) gets bytes rendered for it alone, and the newer
    snapshot's stay. Counts renders, so tests can see that N concurrent scrapes of one
    snapshot render it once. The text is kept as render_pieces()' pieces.
    """

    # A text no scrape is expected to ask for again stays this long after it is handed out, for
    # the other scrapes of the same round (two Prometheus replicas, a retry, a curl beside them)
    LINGER = 1.0

    def __init__(self, render: Callable[[object, bool], bytes | list[bytes]] = render_pieces,
                 later: Callable[[float, Callable[[], None]], None] | None = None):
        self._render = render
        self._later = later or _timer
        self._lock = threading.Lock()
        self._snapshot = None
        self._replaced = None  # weakref.ref to the snapshot the current one replaced
        self._slots: dict[tuple, _Slot] = {}
        self.renders = 0

    def get(self, snapshot, openmetrics: bool, deflated: bool = False, keep_text: bool = True):
        """The snapshot's part 2: its pieces, or (deflated) a Deflated of them. `keep_text`
        False: once deflated, or LINGER seconds after it is handed out, the text is not kept (no
        scrape is expected to ask for it again); a scrape that does ask renders it again."""
        with self._lock:
            late = snapshot is not self._snapshot and self._replaced is not None \
                and self._replaced() is snapshot
            if not late:
                if snapshot is not self._snapshot:
                    self._replaced = _weak(self._snapshot)
                    self._snapshot, self._slots = snapshot, {}
                slot = self._slots.setdefault((openmetrics, deflated), _Slot())
        if late:
            text = self._counted_render(snapshot, openmetrics)
            return Deflated.of(text) if deflated else text
        with slot.lock:  # one render per variant; the others wait for its bytes
            value = slot.value
            if value is None:
                if deflated:
                    value = slot.value = Deflated.of(self.get(snapshot, openmetrics))
                    if not keep_text:
                        self._drop(snapshot, openmetrics)
                else:
                    value = slot.value = self._counted_render(snapshot, openmetrics)
                    slot.made += 1
            if not deflated and not keep_text:
                made = slot.made
                self._later(self.LINGER, lambda: self._let_go(slot, made))
            return value

    @staticmethod
    def _let_go(slot: _Slot, made: int) -> None:
        """Drop the slot's text if it is still the made'th render, and give the heap back (a
        body still being written keeps it until Exposition.sent())."""
        with slot.lock:
            if slot.value is None or slot.made != made:
                return
            slot.value = None
        memory.trim()

    def _counted_render(self, snapshot, openmetrics: bool) -> list[bytes]:
        text = _pieces(self._render(snapshot, openmetrics))
        with self._lock:
            self.renders += 1
        memory.trim()  # the render's garbage: tens of MiB at thousands of memcgs
        return text

    def holds_text(self, snapshot, openmetrics: bool) -> bool:
        """Whether the snapshot's text in this format is kept (for tests and the bench)."""
        with self._lock:
            slot = self._slots.get((openmetrics, False)) if snapshot is self._snapshot else None
        return slot is not None and slot.value is not None

    def _drop(self, snapshot, openmetrics: bool) -> None:
        with self._lock:
            slot = self._slots.get((openmetrics, False)) if snapshot is self._snapshot else None
        if slot is not None:
            with slot.lock:
                slot.value = None


class Exposition:
    """The /metrics body for a scrape: Exposition.body(accept, accept_encoding) -> (pieces,
    headers), or metrics() -> (bytes, headers).

    prepare(), called by the daemon's loop when it publishes a snapshot, renders the variants
    (format, gzip) that scrapes asked for in the last RECENT seconds, so that their next scrapes
    find bytes: at thousands of memcgs a render takes a hundred ms or more, which a scrape
    should not wait for. A variant nobody asks for any more is no longer rendered ahead, nor
    one whose next scrape is expected only after the next publish (prepare(within=)).

    The text (~22 MB at 3,000 memcgs) is kept only while a scrape without gzip is expected to
    read it before the next publish: a gzip scrape needs only the deflated form, and a plain
    scrape's text is let go a round (RenderCache.LINGER) after it is handed out when the next
    plain scrape is expected to read a later snapshot (the memory is then given back; sent())."""

    RECENT = 120.0  # two scrape intervals of a 1-minute job

    def __init__(self, published: Published, extra=(), wall: Callable[[], float] = time.time,
                 render: Callable[[object, bool], bytes | list[bytes]] = render_pieces,
                 clock: Callable[[], float] = time.monotonic,
                 later: Callable[[float, Callable[[], None]], None] | None = None):
        self.published = published
        self.extra = tuple(extra)  # per-scrape collectors, rendered after the snapshot's families
        self.wall = wall
        self.clock = clock
        self.cache = RenderCache(render, later)
        self._asked: dict[tuple[bool, bool], float] = {}  # (openmetrics, gzip) -> when last asked
        self._every: dict[tuple[bool, bool], float] = {}  # -> seconds between its last two asks
        self._next_publish: float | None = None  # when prepare(within=) expects the next publish
        self._trim = False  # a plain body was let go of: give its memory back once written

    # Asks closer than this are one scrape round (two Prometheus replicas, a retry), not an interval
    ROUND = 1.0

    def prepare(self, within: float | None = None) -> int:
        """Render the published snapshot's recently asked-for variants now; how many there were.

        `within`: seconds until the next snapshot is published (snapshot.interval). A variant
        whose next scrape is not expected before then is not rendered ahead: its next scrape
        reads a later snapshot, and this one's render would be thrown away unread. At
        3,000 memcgs a render is ~150 ms: 10 s snapshots scraped every 60 s rendered 6 times a
        minute for 1 read. Expected: its last ask plus the time between its last two asks
        (one scraper's interval); unknown (asked once) or overdue: rendered, as before. A
        scrape that comes earlier than expected renders its snapshot itself (the bytes are the
        same; it waits for the render)."""
        snap = self.published.current
        if snap is None:
            return 0
        now = self.clock()
        self._next_publish = None if within is None else now + within
        wanted = [v for v in list(self._asked) if self._expected(v, now)]
        for om, gz in wanted:  # the deflated form renders the text first
            self.cache.get(snap, om, deflated=gz, keep_text=not gz or self._expected((om, False), now))
        return len(wanted)

    def _expected(self, variant: tuple[bool, bool], now: float) -> bool:
        """Whether a scrape of this variant is expected before the next publish: asked in the last
        RECENT seconds, and (when prepare(within=) said when the next publish is) its next ask
        (its last plus its interval) comes before that; unknown interval or overdue: expected."""
        at = self._asked.get(variant)
        if at is None or now - at > self.RECENT:
            return False
        every, next_publish = self._every.get(variant), self._next_publish
        if next_publish is not None and next_publish < now:
            next_publish = None  # overdue (a cycle failed and kept the snapshot): unknown
        return next_publish is None or every is None or at + every <= next_publish + self.ROUND

    def parts(self, openmetrics: bool) -> tuple[bytes, object, bytes]:
        snap = self.published.current  # read ONCE: every part of one body is one snapshot's
        head = encode(scrape_families(snap, self.wall), openmetrics)
        tail = encode((f for c in self.extra for f in c.collect()), openmetrics)
        return head, snap, tail + (_EOF if openmetrics else b"")

    def body(self, accept: str | None = None, accept_encoding: str | None = None) -> tuple[list[bytes], list]:
        """The body in pieces (to be written in turn) and the headers, for a scrape."""
        om = wants_openmetrics(accept)
        variant, now = (om, wants_gzip(accept_encoding)), self.clock()
        last = self._asked.get(variant)
        if last is not None and now - last >= self.ROUND:
            self._every[variant] = now - last
        self._asked[variant] = now
        head, snap, tail = self.parts(om)
        headers = [("Content-Type", OPENMETRICS if om else TEXT)]
        keep = self._expected((om, False), now)
        if variant[1]:
            middle = self.cache.get(snap, om, deflated=True, keep_text=keep) \
                if snap is not None else Deflated.of(b"")
            headers.append(("Content-Encoding", "gzip"))
            return [gzip_parts(head, middle, tail)], headers
        middle = self.cache.get(snap, om, keep_text=keep) if snap is not None else []
        if not keep:
            self._trim = True
        return [head, *middle, tail], headers

    def metrics(self, accept: str | None = None, accept_encoding: str | None = None) -> tuple[bytes, list]:
        """body(), joined."""
        pieces, headers = self.body(accept, accept_encoding)
        return b"".join(pieces), headers

    def sent(self) -> None:
        """A body from body() was written and let go of: if it held the only reference to a
        text (~22 MB at 3,000 memcgs, in pieces on the heap), give the freed heap back."""
        if self._trim:
            self._trim = False
            memory.trim()
