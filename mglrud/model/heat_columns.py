"""The BPF source's per-cell state as columns: one numpy array per field, one row per map cell.

The same maths as model/hotness.py's step() and the source's per-target assembly
(sources/bpf_heat.py), on arrays instead of one CellKey, Counts and CellState object per
cell: at 65k cells those objects were most of a cycle's CPU (their allocation and the
garbage collector's passes over them) and of the daemon's memory. hotness.step() stays
the reference (the tests run both on the same reads); every float here is computed with
the same IEEE operations in the same order as there, so the snapshot built from these
columns is the same, bit for bit (the golden tests).

A cell's key (tgid, memcg id, region, node, lru) is kept as two uint64 words: the region,
and tgid << 32 | memcg_id << 16 | node << 8 | lru -- struct region_key's fields
(bpf/hotness.bpf.c), so no key is lost. numpy is imported by the caller's module (the BPF
source needs it: sources/bpf_hotness.py's probe says so when it is missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from mglrud.model.hotness import HISTORY, LN2, LRU_NAMES, CellKey, CellState, Counts, RegionHeat

I64 = np.int64


def key_word(tgid, memcg_id, node, lru):
    """The second word of a cell's key (see the module docstring)."""
    return (tgid.astype(np.uint64) << np.uint64(32)) | (memcg_id.astype(np.uint64) << np.uint64(16)) \
        | (node.astype(np.uint64) << np.uint64(8)) | lru.astype(np.uint64)


def match(a_region, a_word, b_region, b_word) -> np.ndarray:
    """For each key of b, the row of a with the same key, else -1 (a's keys are unique; b's
    may repeat: each gets the same row)."""
    na, nb = len(a_region), len(b_region)
    out = np.full(nb, -1, dtype=I64)
    if not na or not nb:
        return out
    r = np.concatenate((a_region, b_region))
    w = np.concatenate((a_word, b_word))
    side = np.concatenate((np.zeros(na, np.int8), np.ones(nb, np.int8)))
    row = np.concatenate((np.arange(na, dtype=I64), np.arange(nb, dtype=I64)))
    order = np.lexsort((side, w, r))  # by key, a's row first
    r, w, side, row = r[order], w[order], side[order], row[order]
    new = np.ones(na + nb, bool)
    new[1:] = (r[1:] != r[:-1]) | (w[1:] != w[:-1])
    group = np.cumsum(new) - 1
    head = np.flatnonzero(new)  # each key's first row: a's when a has the key
    a_row = np.where(side[head] == 0, row[head], -1)
    b = side == 1
    out[row[b]] = a_row[group[b]]
    return out


@dataclass
class Cells:
    """One read of the heat map, per-CPU values combined, in the map's order."""

    tgid: np.ndarray  # uint64 each (Python ints on tolist())
    memcg_id: np.ndarray
    region: np.ndarray
    node: np.ndarray
    lru: np.ndarray  # index into LRU_NAMES
    pages: np.ndarray  # int64
    last_ns: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.tgid)

    @classmethod
    def from_dict(cls, cells: dict) -> "Cells":
        """{CellKey: Counts} (a stand-in program's read) -> columns, in the dict's order."""
        n = len(cells)
        cols = [np.fromiter((k[i] for k in cells), dtype=np.uint64, count=n) for i in range(4)]
        lru = np.fromiter((LRU_NAMES.index(k.lru) for k in cells), dtype=np.uint64, count=n)
        pages = np.fromiter((c[0] for c in cells.values()), dtype=I64, count=n)
        last = np.fromiter((c[2] for c in cells.values()), dtype=I64, count=n)
        return cls(cols[0], cols[1], cols[2], cols[3], lru, pages, last)

    def word(self) -> np.ndarray:
        return key_word(self.tgid, self.memcg_id, self.node, self.lru)

    def keys(self, rows=None) -> list:
        """The CellKeys of `rows` (all by default), made at C speed."""
        sel = (lambda a: a) if rows is None else (lambda a: a[rows])
        lrus = np.array(LRU_NAMES, dtype=object)[sel(self.lru).astype(np.intp)].tolist()
        return list(map(tuple.__new__, repeat(CellKey), zip(sel(self.tgid).tolist(), sel(self.memcg_id).tolist(),
                                                             sel(self.region).tolist(), sel(self.node).tolist(),
                                                             lrus)))


def empty_cells() -> Cells:
    u = np.zeros(0, np.uint64)
    return Cells(u, u, u, u, u, np.zeros(0, I64), np.zeros(0, I64))


def dedup(cells: Cells) -> Cells:
    """A read with each key once, as dict(zip(keys, counts)) keeps it: the first row's place,
    the last row's counts (a hash map changing during a batched lookup may repeat a key)."""
    n = len(cells)
    if n < 2:
        return cells
    w = cells.word()
    order = np.lexsort((np.arange(n), w, cells.region))
    r, ws = cells.region[order], w[order]
    dup = (r[1:] == r[:-1]) & (ws[1:] == ws[:-1])
    if not dup.any():
        return cells
    d = {}
    for k, p, t in zip(cells.keys(), cells.pages.tolist(), cells.last_ns.tolist()):
        d[k] = Counts(p, 0, t)
    return Cells.from_dict(d)


class State:
    """Per-cell state (model/hotness.py's CellState, one row per cell of the latest read, in
    its order), plus each cell's pass-tagged finds (RegionHeat.found_in). Histories are kept
    newest first, as wide as the longest one (at most HISTORY)."""

    def __init__(self, cells: Cells, seen, total, delta, rate, last_ns, updated_ns, hist_ns, hist_pages, hist_len,
                 fi_seq, fi_pages, fi_len, known=None):
        self.cells = cells  # the key columns (cells.pages/last_ns: the read's)
        self.seen, self.total, self.delta, self.rate = seen, total, delta, rate
        self.last_ns, self.updated_ns = last_ns, updated_ns
        self.hist_ns, self.hist_pages, self.hist_len = hist_ns, hist_pages, hist_len
        self.fi_seq, self.fi_pages, self.fi_len = fi_seq, fi_pages, fi_len
        # False: a row kept only for its pass-tagged finds (the program was restarted: its maps
        # start from zero, and the next read is each cell's first sight again)
        self.known = np.ones(len(cells), bool) if known is None else known

    def __len__(self) -> int:
        return len(self.cells)

    @classmethod
    def empty(cls) -> "State":
        z, f = np.zeros(0, I64), np.zeros(0, np.float64)
        zz = np.zeros((0, 0), I64)
        return cls(empty_cells(), z, z, z, f, z, z, zz, zz, z, zz, zz, z)

    def take(self, rows) -> "State":
        """The rows `rows` (an index array or a boolean mask), in that order."""
        c = self.cells
        cells = Cells(c.tgid[rows], c.memcg_id[rows], c.region[rows], c.node[rows], c.lru[rows], c.pages[rows],
                      c.last_ns[rows])
        return State(cells, self.seen[rows], self.total[rows], self.delta[rows], self.rate[rows], self.last_ns[rows],
                     self.updated_ns[rows], self.hist_ns[rows], self.hist_pages[rows], self.hist_len[rows],
                     self.fi_seq[rows], self.fi_pages[rows], self.fi_len[rows], self.known[rows])

    def forget_counts(self) -> "State":
        """After a program restart: no counts known, the pass-tagged finds kept (as the source
        kept them by key)."""
        s = self.take(np.arange(len(self)))
        s.known = np.zeros(len(self), bool)
        return s

    def forget_finds(self) -> None:
        self.fi_len = np.zeros(len(self), I64)
        self.fi_seq = self.fi_pages = np.zeros((len(self), 0), I64)

    def as_dict(self) -> dict:
        """{CellKey: CellState} of the known cells, as hotness.step() gives them (tests, debugging)."""
        rows = np.flatnonzero(self.known)
        out = {}
        for i, k in zip(rows.tolist(), self.cells.keys(rows)):
            n = int(self.hist_len[i])
            hist = tuple(zip(self.hist_ns[i, :n].tolist()[::-1], self.hist_pages[i, :n].tolist()[::-1]))
            out[k] = CellState(int(self.seen[i]), int(self.total[i]), int(self.delta[i]), float(self.rate[i]),
                               int(self.last_ns[i]), int(self.updated_ns[i]), hist)
        return out

    def found_in_dict(self) -> dict:
        rows = np.flatnonzero(self.fi_len)
        return {k: tuple(zip(self.fi_seq[i, :self.fi_len[i]].tolist(), self.fi_pages[i, :self.fi_len[i]].tolist()))
                for i, k in zip(rows.tolist(), self.cells.keys(rows))}


def _prepend(ns, pages, length, rows, new_ns, new_pages):
    """(ns, pages, length) with (new_ns, new_pages) put first in the rows `rows`, each row
    keeping at most HISTORY entries; the arrays widen as needed."""
    if not len(rows):
        return ns, pages, length
    width = ns.shape[1]
    want = min(HISTORY, int(length[rows].max()) + 1)
    if want > width:
        grow = np.zeros((ns.shape[0], want - width), I64)
        ns, pages = np.hstack((ns, grow)), np.hstack((pages, grow))
        width = want
    if width > 1:
        ns[rows, 1:] = ns[rows, :-1]
        pages[rows, 1:] = pages[rows, :-1]
    ns[rows, 0] = new_ns
    pages[rows, 0] = new_pages
    length = length.copy()
    length[rows] = np.minimum(length[rows] + 1, HISTORY)
    return ns, pages, length


def step(prev: State, cells: Cells, now: int, half_life: float) -> State:
    """hotness.step() on columns: the new state from the previous one and a read (its cells
    in the read's order; cells missing from the read are dropped)."""
    n = len(cells)
    k = LN2 / half_life
    m = match(prev.cells.region, prev.cells.word(), cells.region, cells.word()) if len(prev) else np.full(n, -1, I64)
    old = m >= 0
    known = np.zeros(n, bool)
    known[old] = prev.known[m[old]]
    pages, last = cells.pages, cells.last_ns
    mk = np.where(known, m, 0)  # rows of prev for the known cells (0 elsewhere: masked out below)

    def prev_col(a, default):
        return np.where(known, a[mk], default) if len(prev) else np.full(n, default, a.dtype)

    seen = prev_col(prev.seen, 0)
    delta = np.where(known, np.where(pages >= seen, pages - seen, pages), pages)
    total = np.where(known, prev_col(prev.total, 0) + delta, pages)
    # the decay of each previous read time (every cell of one read shares it), as hotness.step()
    decay = np.ones(n, np.float64)
    if known.any():
        upd = prev.updated_ns[m[known]]
        times, inv = np.unique(upd, return_inverse=True)
        factors = np.array([2.0 ** (-max(0.0, (now - t) / 1e9) / half_life) for t in times.tolist()])
        decay[known] = factors[inv]
    prate = prev_col(prev.rate, 0.0)
    kept = prate * decay
    rate = np.where(known, np.where(delta != 0, kept + delta * k, kept), pages * k)
    plast = prev_col(prev.last_ns, 0)
    last_ns = np.where(known & (delta == 0), np.where(last > plast, last, plast), last)
    # histories: the known cells' carried over; a new find goes first
    if len(prev) and prev.hist_ns.shape[1]:
        width = prev.hist_ns.shape[1]
        hist_ns = np.where(known[:, None], prev.hist_ns[mk], 0)
        hist_pages = np.where(known[:, None], prev.hist_pages[mk], 0)
        hist_len = np.where(known, prev.hist_len[mk], 0)
    else:
        width = 0
        hist_ns = hist_pages = np.zeros((n, width), I64)
        hist_len = np.zeros(n, I64)
    found = np.flatnonzero(delta != 0)
    hist_ns, hist_pages, hist_len = _prepend(hist_ns, hist_pages, hist_len, found, last_ns[found], delta[found])
    # pass-tagged finds follow their key (even across a program restart: known False)
    mo = np.where(old, m, 0)
    if len(prev) and prev.fi_seq.shape[1]:
        fi_seq = np.where(old[:, None], prev.fi_seq[mo], 0)
        fi_pages = np.where(old[:, None], prev.fi_pages[mo], 0)
        fi_len = np.where(old, prev.fi_len[mo], 0)
    else:
        fi_seq = fi_pages = np.zeros((n, 0), I64)
        fi_len = np.zeros(n, I64)
    return State(cells, pages.copy(), total, delta, rate, last_ns, np.full(n, now, I64), hist_ns, hist_pages,
                 hist_len, fi_seq, fi_pages, fi_len)


def tag_finds(state: State, moved: dict) -> State:
    """Put (pass seq, pages found) first in the pass-tagged finds of the cells found accessed in
    the memcgs whose aging pass `moved` lists ({memcg_id: AgingPass})."""
    if not moved or not len(state):
        return state
    ids = np.fromiter(moved, dtype=np.uint64, count=len(moved))
    seqs = np.fromiter((p.seq for p in moved.values()), dtype=I64, count=len(moved))
    rows = np.flatnonzero(np.isin(state.cells.memcg_id, ids) & (state.delta != 0))
    if not len(rows):
        return state
    order = np.argsort(ids)
    seq = seqs[order][np.searchsorted(ids[order], state.cells.memcg_id[rows])]
    state.fi_seq, state.fi_pages, state.fi_len = _prepend(state.fi_seq, state.fi_pages, state.fi_len, rows, seq,
                                                          state.delta[rows])
    return state


def pairs(a, b, length) -> list:
    """Per row, the tuple of its first length[i] (a, b) pairs, built at C speed (one group of
    rows per length, no Python step per row)."""
    n = len(length)
    out: list = [()] * n
    if not n or not a.shape[1]:
        return out
    for ln in np.unique(length).tolist():
        if not ln:
            continue
        rows = np.flatnonzero(length == ln)
        got = list(map(tuple, map(zip, a[rows, :ln].tolist(), b[rows, :ln].tolist())))
        for i, t in zip(rows.tolist(), got):
            out[i] = t
    return out


class RegionColumns(Sequence):
    """A target's region cells as the snapshot carries them: a sequence of RegionHeat, kept as
    columns (sorted as the snapshot lists them) and made into RegionHeat objects only when
    someone iterates (/snapshot.json, tests). The finds stay in the source's State they come
    from (its arrays are not changed after the cycle that made them): at 65k cells with 16
    finds each, the objects were a million tuples a cycle, most of the daemon's memory.
    collectors/bpf.py reads the columns directly (idle_histogram(), cold_bytes())."""

    CHUNK = 4096  # cells made into objects at a time when iterating

    def __init__(self, cols: dict, state: "State | None", src_row, now_ns: int, with_passes: bool):
        # cols: tgid, memcg_id, start, node, lru (index), res (-1: not read), delta, total, rate, idle
        self.cols = cols
        self.state = state
        self.src_row = src_row  # the state's row of each cell, -1 for a resident cell never counted
        self.now_ns = now_ns
        self.with_passes = with_passes

    def __len__(self) -> int:
        return len(self.src_row)

    def found_columns(self):
        """(ages (n, W) float64 seconds ago, pages (n, W), lengths (n,)): each cell's finds,
        newest first, as RegionHeat.found has them."""
        n, st = len(self), self.state
        # a state with no rows (a restarted program) can still have history columns: row 0, used
        # below for cells never counted, must exist
        if st is None or not st.hist_ns.shape[1] or not n or not len(st):
            return np.zeros((n, 0)), np.zeros((n, 0), I64), np.zeros(n, I64)
        rows = np.where(self.src_row >= 0, self.src_row, 0)
        counted = (self.src_row >= 0)
        hn = st.hist_ns[rows]
        ages = np.where(hn < self.now_ns, (self.now_ns - hn) / 1e9, 0.0)
        return ages, st.hist_pages[rows], np.where(counted, st.hist_len[rows], 0)

    def idle_and_cold(self, edges, thresholds, page_size: int) -> dict:
        """{(node, lru): (buckets, sum, cold)} for the cells of each (node, lru): what
        hotness.idle_histogram() and cold_bytes() give over that pair's RegionHeats (cold: one
        figure per threshold), computed on the columns with the same sums in the same order."""
        inf = float("inf")
        ages, pages, length = self.found_columns()
        n, w = ages.shape
        res = np.maximum(self.cols["res"], 0)  # None counts as 0 (region_bytes, warm_pages)
        if w:
            valid = np.arange(w)[None, :] < length[:, None]
            a = np.where(valid, ages, inf)  # padding last, never within an edge
            p = np.where(valid, pages, 0)
            order = np.lexsort((p, a), axis=-1)  # sorted(r.found): by age, then pages
            a, p = np.take_along_axis(a, order, -1), np.take_along_axis(p, order, -1)
            # warm_pages(r, age_j): the most pages of the finds within age_j (ties included)
            pm = np.maximum.accumulate(p, axis=1)
            end = np.ones((n, w), bool)
            end[:, :-1] = a[:, 1:] != a[:, :-1]
            idx = np.where(end, np.arange(w)[None, :], w)
            last = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
            warm = np.where(res[:, None] > 0, np.minimum(res[:, None], np.take_along_axis(pm, np.minimum(last, w - 1),
                                                                                          1)), 0)
            prev = np.zeros((n, w), I64)
            prev[:, 1:] = warm[:, :-1]
            amount = np.where(valid, (warm - prev) * page_size, 0)
            seen = np.where(length > 0, warm[np.arange(n), np.maximum(length - 1, 0)], 0)
            vsorted = np.arange(w)[None, :] < length[:, None]  # sorting keeps the valid ones first
        else:
            a = np.zeros((n, 0))
            amount = np.zeros((n, 0), I64)
            seen = np.zeros(n, I64)
            vsorted = np.zeros((n, 0), bool)
        rest = res * page_size - seen * page_size  # the +Inf point of each cell
        out = {}
        node, lru = self.cols["node"], self.cols["lru"]
        for pair in np.unique(node * np.uint64(len(LRU_NAMES)) + lru).tolist():
            nd, lr = divmod(pair, len(LRU_NAMES))
            rows = np.flatnonzero((node == nd) & (lru == lr))
            ga, gm, gv = a[rows], amount[rows], vsorted[rows]
            buckets = [(e, int(gm[ga <= e].sum())) for e in tuple(edges)]
            buckets.append((inf, int(gm.sum()) + int(rest[rows].sum())))
            prods = ga[gv] * gm[gv]  # row by row, each row's finds by age: the points' order
            total = float(np.cumsum(prods)[-1]) if len(prods) else 0
            cold = []
            for th in thresholds:
                if w:
                    within = np.where(gv & (ga < th), p[rows], 0).max(axis=1)  # warm_pages(exclusive)
                    wr = np.where(res[rows] > 0, np.minimum(res[rows], within), 0)
                else:
                    wr = np.zeros(len(rows), I64)
                cold.append(int((res[rows] - wr).sum()) * page_size)
            out[(nd, LRU_NAMES[lr])] = (buckets, total, cold)
        return out

    def _objects(self, lo: int, hi: int) -> list:
        c = self.cols
        sl = slice(lo, hi)
        res = c["res"][sl].tolist()
        if (c["res"][sl] < 0).any():
            res = [None if x < 0 else x for x in res]
        n = hi - lo
        st = self.state
        src = self.src_row[sl]
        rows = np.where(src >= 0, src, 0)
        counted = src >= 0
        if st is not None and st.hist_ns.shape[1] and n and len(st):  # len: see found_columns()
            hn = st.hist_ns[rows]
            ages = np.where(hn < self.now_ns, (self.now_ns - hn) / 1e9, 0.0)
            found = pairs(ages, st.hist_pages[rows], np.where(counted, st.hist_len[rows], 0))
        else:
            found = [()] * n
        if self.with_passes and st is not None and st.fi_seq.shape[1] and n and len(st):
            found_in = pairs(st.fi_seq[rows], st.fi_pages[rows], np.where(counted, st.fi_len[rows], 0))
        else:
            found_in = [()] * n
        lrus = np.array(LRU_NAMES, dtype=object)[c["lru"][sl].astype(np.intp)].tolist()
        return list(map(tuple.__new__, repeat(RegionHeat), zip(
            c["tgid"][sl].tolist(), c["memcg_id"][sl].tolist(), c["start"][sl].tolist(), c["node"][sl].tolist(),
            lrus, res, c["delta"][sl].tolist(), c["total"][sl].tolist(), c["rate"][sl].tolist(),
            c["idle"][sl].tolist(), found, found_in)))

    def __iter__(self):
        for lo in range(0, len(self), self.CHUNK):
            yield from self._objects(lo, min(len(self), lo + self.CHUNK))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("region index out of range")
        return self._objects(i, i + 1)[0]

    def __eq__(self, other) -> bool:
        if isinstance(other, (RegionColumns, tuple, list)):
            return len(self) == len(other) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"RegionColumns({len(self)} cells)"
