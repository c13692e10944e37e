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
middle's CRC once, combined with the head's: crc32_combine()); the cache keeps the middle's text
only while a scrape without gzip is expected to read it before the next publish. When no such
scrape is expected, the middle is deflated as it is rendered, one segment per memcg family
(render_deflated(), Deflater): its text is never held whole.
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
# gzip level: the cached part is compressed once per snapshot, and it is the daemon's third
# cost after its cycles and renders at a 15 s scrape interval (bench/scale.py). On /metrics text
# (22.7 MB at 3,000 memcgs, one process, load ~12, medians of 7): level 1 59-71 ms and 1.274 MB,
# level 3 68-77 ms and 1.252 MB (+1.7 % bytes for level 1), zlib's default 6 300 ms and 0.995 MB
# (client_python's gzip.compress() uses 9). Levels 1-3 are deflate's fast strategy; 1 is its
# shortest match search. The bytes go to a Prometheus on the same network.
GZIP_LEVEL = 1


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


def render_deflated(snapshot, openmetrics: bool = False) -> "Deflated":
    """Deflated.of(render_pieces(snapshot, openmetrics)) without the text: what a gzip scrape
    needs (Prometheus asks for gzip). The per-memcg families come a batch of lruvecs at a time,
    each batch's lines of every family at once (memcg.sections()), and each family is deflated
    in a segment of its own (Deflater) as its lines come, then the segments are joined in
    /metrics order: the text is never held whole. Why: at 3,000 memcgs it is ~22 MB a render,
    which the heap grew to hold and gave back (malloc_trim) every render, ~5,500 page faults
    each time, and the peak RSS. Decompressed, the same bytes as render_pieces()
    (tests/unit/test_exposition.py); the deflate stream differs by the segments' flushes."""
    d = Deflater()
    seg = d.segment()
    pending: list = []
    with memory.gc_paused():  # the batches' lists of lines make no cycles (memcg.chunks())
        for f in collectors.families(snapshot, snapshot.taken_at, direct=True):
            if not isinstance(f, collectors.Text):
                if f.name not in PER_SCRAPE:
                    pending.append(f)
                continue
            d.feed(seg, encode(pending, openmetrics))
            pending = []
            if f.sections is None:
                for piece in f.render(openmetrics):
                    d.feed(seg, piece)
                continue
            heads, batches = f.sections(openmetrics)
            segs = [d.segment() for _ in heads]
            for s, head in zip(segs, heads):
                if head is not None:
                    d.feed(s, head)
            for texts in batches:
                for s, head, text in zip(segs, heads, texts):
                    if text is not None and head is not None:  # (as memcg.chunks() keeps them)
                        d.feed(s, text)
            seg = d.segment()  # what follows the Text
        d.feed(seg, encode(pending, openmetrics))
    return d.finish()


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
    its CRC-32 and length, and crc32_shift(length). Without the text: a scrape asking for gzip
    (Prometheus does) needs none of it, so the cache need not keep 20 MiB of it at 3,000 memcgs."""

    stream: bytes
    crc: int
    size: int
    shift: int

    @classmethod
    def of(cls, middle: bytes | list[bytes]) -> "Deflated":
        d = Deflater()
        seg = d.segment()
        for piece in _pieces(middle):
            d.feed(seg, piece)
        return d.finish()


class Deflater:
    """A raw deflate stream made of segments, each compressed by a compressor of its own and
    ended by a sync flush, then joined in order (RFC 1951: a stream may be cut at a byte-aligned
    sync flush, as gzip_parts() joins head, middle and tail), with the CRC-32 and length of the
    text they hold, in order. Why segments: the per-memcg families are written a batch of
    lruvecs at a time, each batch giving lines of every family, and /metrics has them family
    after family; with one segment per family each batch's lines are deflated as soon as they
    are written, and the snapshot's ~22 MB of text (3,000 memcgs) is never held at once for a
    gzip scrape (render_deflated()). It decompresses to the same text, and is no larger: at
    3,000 memcgs 1,266,924 bytes against 1,273,894 for the text in one stream (level 1; a
    family's lines are alike, and a segment's window holds only them)."""

    def __init__(self):
        self._segments: list[list] = []  # [compressor, deflated pieces, crc, size]

    def segment(self) -> list:
        seg = [zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15), [], 0, 0]
        self._segments.append(seg)
        return seg

    @staticmethod
    def feed(seg: list, data: bytes) -> None:
        if data:
            seg[1].append(seg[0].compress(data))
            seg[2] = zlib.crc32(data, seg[2])
            seg[3] += len(data)

    def finish(self) -> Deflated:
        stream: list[bytes] = []
        crc = size = 0
        for compressor, out, seg_crc, seg_size in self._segments:
            if seg_size:  # (an empty segment's flush would still be an empty block)
                stream += out
                stream.append(compressor.flush(zlib.Z_SYNC_FLUSH))
                crc, size = crc32_combine(crc, seg_crc, seg_size) if size else seg_crc, size + seg_size
        self._segments = []
        return Deflated(b"".join(stream), crc, size, crc32_shift(size))


def gzip_parts(head: bytes, middle: Deflated, tail: bytes) -> bytes:
    """One gzip member of head + the middle's text + tail."""
    # crc32(head + text): the head's CRC carried over the text's length, xor the text's own
    # CRC (zlib's crc32_combine()); then on over tail
    crc = zlib.crc32(tail, crc32_combine(zlib.crc32(head), middle.crc, middle.size, middle.shift))
    size = len(head) + middle.size + len(tail)
    return b"".join((_GZIP_HEADER, _deflate(head, False), middle.stream, _deflate(tail, True),
                     struct.pack("<II", crc, size & 0xFFFFFFFF)))


# ---------------------------------------------------------------- CRC-32 of a concatenation

_POLY = 0xEDB88320  # the CRC-32 polynomial, reflected (zlib's crc32.c)


def _multmodp(a: int, b: int) -> int:
    """a times b modulo the CRC-32 polynomial (reflected: bit 31 is x^0); a must not be 0.
    zlib's multmodp() (crc32.c, 1.2.12 on)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo the polynomial, n = 0..31 (zlib's x2n_table)
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_shift(length: int) -> int:
    """x^(8 * length) modulo the polynomial: the operator that carries a CRC-32 over `length`
    zero bytes, so that crc32(a + b) == crc32_combine(crc32(a), crc32(b), len(b)). zlib's
    x2nmodp(length, 3). About 0.1 ms for 22 MB: one product per bit set in the length (the
    matrix form it replaces, zlib's before 1.2.12, took ~5 ms, once per render)."""
    p, k = 1 << 31, 3  # x^0
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int, shift: int | None = None) -> int:
    """crc32(a + b) from crc32(a), crc32(b) and len(b) (zlib's crc32_combine()); `shift`:
    crc32_shift(length2), when the caller has it."""
    return _multmodp(crc32_shift(length2) if shift is None else shift, crc1) ^ crc2


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
        # the deflated form without the text (render_deflated()), for render_pieces' own text
        self._deflate = render_deflated if render is render_pieces else None
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
            if deflated and self._deflate is not None:
                return self._counted_render(snapshot, openmetrics, self._deflate)
            text = self._counted_render(snapshot, openmetrics)
            return Deflated.of(text) if deflated else text
        with slot.lock:  # one render per variant; the others wait for its bytes
            value = slot.value
            if value is None:
                if deflated and not keep_text and self._deflate is not None \
                        and not self.holds_text(snapshot, openmetrics):
                    value = slot.value = self._counted_render(snapshot, openmetrics, self._deflate)
                elif deflated:
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

    def _counted_render(self, snapshot, openmetrics: bool, render=None):
        """The text's pieces, or (render: render_deflated) its Deflated."""
        text = (render or self._render)(snapshot, openmetrics)
        text = text if render else _pieces(text)
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
