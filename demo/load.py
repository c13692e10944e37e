"""The demo's load generator for memcached (Debian's python3-pymemcache): a fill, then reads.

- fill: keys 0 .. N-1 (`key:%08d`) in order, each with a value of --value-size bytes;
- reads: keys drawn from a normal distribution around the middle of the last
  --read-fraction of the key range (sigma --sigma of that range), for --read-seconds;
  the keys before it are filled but never read.

With --pid (memcached's pid, root), it also records where the fill put the keys: after
each batch of keys it reads /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst;
bit 63: present) over memcached's anonymous writable mappings, and the pages that became
present during a batch, outside what was mapped before the fill (the hash table, stacks),
are that batch's (memcached mmaps a 1 MiB slab page whenever a slab class needs one).
That is the ground truth `demo/guest.py` and tests/vm/test_memcached_vm.py compare the
heat against. One progress line on stderr; the result as JSON (--out).

    python3 demo/load.py --port 11311 --keys 30000 --pid PID --out load.json fill
    python3 demo/load.py --port 11311 --keys 30000 --read-seconds 60 --out reads.json read
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

PAGE = 4096
REGION_SHIFT = 21


def key(i: int) -> str:
    return f"key:{i:08d}"


def anon_ranges(pid: int) -> list[tuple[int, int]]:
    """memcached's anonymous writable private mappings (heap and mmap'd slab pages)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if f[1].startswith("rw") and (len(f) < 6 or f[5] == "[heap]"):
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            out.append((lo, hi))
    return out


def present_regions(pid: int) -> dict[int, bytes]:
    """{2 MiB region start: per page of the region, the top byte of its pagemap entry (bit 7 =
    bit 63: present; 0 where memcached has no anonymous mapping)} over memcached's anonymous
    mappings. Regions are compared as bytes, so only those that changed are looked at page by
    page (TCG is slow)."""
    per = 1 << (REGION_SHIFT - 12)
    out: dict[int, bytearray] = {}
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for lo, hi in anon_ranges(pid):
            f.seek(lo // PAGE * 8)
            top = f.read((hi - lo) // PAGE * 8)[7::8]
            page = lo // PAGE
            i = 0
            while i < len(top):
                r = (page + i) // per
                off = (page + i) - r * per
                j = min(len(top), i + per - off)
                buf = out.setdefault(r << REGION_SHIFT, bytearray(per))
                buf[off:off + j - i] = top[i:j]
                i = j
    return {r: bytes(b) for r, b in out.items()}


def new_pages(before: dict[int, bytes], now: dict[int, bytes], skip=()) -> list[int]:
    """Addresses of the pages present in `now` and not in `before`, but for pages inside the
    (lo, hi) ranges of `skip`; ascending."""
    out = []
    for r, top in sorted(now.items()):
        old = before.get(r)
        if old == top:
            continue
        old = old or bytes(len(top))
        out += [r + i * PAGE for i, (a, b) in enumerate(zip(old, top)) if b & 0x80 and not a & 0x80
                and not any(lo <= r + i * PAGE < hi for lo, hi in skip)]
    return out


def runs(addresses: list[int], least: int = 64) -> list[tuple[int, int]]:
    """Ascending page addresses -> the (lo, hi) runs of contiguous pages at least `least` long:
    slab pages (memcached writes every chunk header of a new slab page when it allocates it)."""
    out = []
    for a in addresses:
        if out and out[-1][1] == a:
            out[-1][1] = a + PAGE
        else:
            out.append([a, a + PAGE])
    return [(lo, hi) for lo, hi in out if hi - lo >= least * PAGE]


def slab_geometry(c) -> tuple[int, int]:
    """(chunk size, chunks per page) of the slab class holding most items (`stats slabs`)."""
    st = {k.decode() if isinstance(k, bytes) else k: v for k, v in c.stats("slabs").items()}
    best = max((int(v), k.split(":")[0]) for k, v in st.items() if k.endswith(":used_chunks"))[1]
    return int(st[f"{best}:chunk_size"]), int(st[f"{best}:chunks_per_page"])


class Progress:
    """One line on stderr, rewritten at most every 0.5 s."""

    def __init__(self):
        self.at = 0.0

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.at >= 0.5:
            self.at = now
            sys.stderr.write("\r" + text.ljust(78))
            sys.stderr.flush()

    def done(self, text: str) -> None:
        self(text, force=True)
        sys.stderr.write("\n")


def connect(port: int):
    from pymemcache.client.base import Client

    return Client(("127.0.0.1", port), connect_timeout=10, timeout=30, no_delay=True)


def fill(port: int, keys: int, value_size: int, pid: int | None, seconds: float = 0.0, batches: int = 40) -> dict:
    """Set every key in order, paced to last at least `seconds` (so that several aging passes
    see it progress); with pid, which keys each 2 MiB region holds.

    The ground truth: memcached takes a new 1 MiB slab page only when the class's previous one is
    full, so the j-th slab page allocated holds keys [j * per_page, (j + 1) * per_page); a new
    page shows in pagemap as a run of newly present pages (it writes every chunk's header when
    it takes the page), outside what was mapped before the fill (hash table, stacks)."""
    c = connect(port)
    value = bytes(range(256)) * (value_size // 256) + b"v" * (value_size % 256)
    show = Progress()
    before = present_regions(pid) if pid else {}
    premapped = anon_ranges(pid) if pid else []
    per = max(1, -(-keys // batches))
    pages: list[tuple[int, int]] = []  # slab pages (lo, hi) in allocation order
    start = time.time()
    for lo in range(0, keys, per):
        hi = min(keys, lo + per)
        c.set_many({key(i): value for i in range(lo, hi)}, noreply=False)
        if pid:
            now = present_regions(pid)
            # within a batch, later pages are lower: mmap hands out addresses downwards
            pages += sorted(runs(new_pages(before, now, premapped)), reverse=True)
            before = now
        rate = hi / max(time.time() - start, 1e-6)
        show(f"fill: {hi}/{keys} keys ({100 * hi // keys}%), {rate:.0f} keys/s")
        ahead = start + seconds * hi / keys - time.time()
        if ahead > 0:
            time.sleep(ahead)
    show.done(f"fill: {keys} keys of {value_size} B in {time.time() - start:.1f}s")
    chunk, per_page = slab_geometry(c)
    c.close()
    regions: dict[int, dict] = {}
    for j, (plo, phi) in enumerate(pages):
        klo, khi = j * per_page, min(keys, (j + 1) * per_page)
        if klo >= keys:
            break
        r = plo >> REGION_SHIFT << REGION_SHIFT
        while r < phi:
            n = (min(phi, r + (1 << REGION_SHIFT)) - max(plo, r)) // PAGE
            e = regions.setdefault(r, {"keys": [klo, khi], "pages": 0, "slab_pages": []})
            e["keys"] = [min(e["keys"][0], klo), max(e["keys"][1], khi)]
            e["pages"] += n
            e["slab_pages"].append([f"{plo:#x}", f"{phi:#x}", klo, khi])
            r += 1 << REGION_SHIFT
    return {"keys": keys, "value_size": value_size, "chunk_size": chunk, "chunks_per_page": per_page,
            "fill_start": start, "fill_end": time.time(), "slab_pages": len(pages),
            "regions": {f"{r:#x}": v for r, v in sorted(regions.items())}}


def reads(port: int, keys: int, read_fraction: float, sigma: float, seconds: float, seed: int = 1) -> dict:
    """Gets of normally distributed keys in the last `read_fraction` of the key range, for
    `seconds`; the keys before it, filled first, are never read.

    Why the never-read keys are the first ones: memcached puts a new item at the head of its
    hash bucket's chain, and a get walks the chain up to the key it looks for, so a read of a
    key touches the items stored after it in the same bucket (1 get in ~10 at this table's
    load), never those stored before it."""
    c = connect(port)
    first = keys - max(1, int(keys * read_fraction))
    n = keys - first
    mu, sd = first + n / 2, sigma * n
    rng = random.Random(seed)
    counts: Counter = Counter()
    show = Progress()
    start = time.time()
    end = start + seconds
    gets = hits = 0
    while time.time() < end:
        batch = []
        while len(batch) < 32:
            k = int(rng.gauss(mu, sd))
            if first <= k < keys:
                batch.append(k)
        got = c.get_many([key(k) for k in batch])
        gets += len(set(batch))
        hits += len(got)
        counts.update(batch)
        left = end - time.time()
        show(f"reads: {gets} gets ({100 * hits // max(gets, 1)}% hits), keys ~N({mu:.0f}, {sd:.0f}), "
             f"{max(0.0, left):.0f}s left")
    show.done(f"reads: {gets} gets in {time.time() - start:.1f}s, {100 * hits // max(gets, 1)}% hits; "
               f"keys 0..{first - 1} never read")
    c.close()
    return {"read_keys": n, "never_read_keys": first, "mu": mu, "sigma": sd, "read_start": start, "read_end": time.time(), "gets": gets,
            "hits": hits, "counts": {str(k): v for k, v in sorted(counts.items())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("fill", "read"))
    p.add_argument("--port", type=int, default=11311)
    p.add_argument("--keys", type=int, default=30000)
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--read-fraction", type=float, default=0.8, help="share of the key range read (the last keys)")
    p.add_argument("--sigma", type=float, default=0.1, help="sigma of the reads, as a share of the read range")
    p.add_argument("--read-seconds", type=float, default=60.0)
    p.add_argument("--fill-seconds", type=float, default=0.0, help="pace the fill to last at least this long")
    p.add_argument("--pid", type=int, help="fill: memcached's pid, to record where the keys went")
    p.add_argument("--out", help="write the result here as JSON")
    a = p.parse_args(argv)
    if a.phase == "fill":
        res = fill(a.port, a.keys, a.value_size, a.pid, a.fill_seconds)
    else:
        res = reads(a.port, a.keys, a.read_fraction, a.sigma, a.read_seconds)
    if a.out:
        Path(a.out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
