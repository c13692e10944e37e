"""The I/O edge of the commands that read a running daemon (`mglrud report`, `heatmap`): fetch /snapshot.json.

Rendering is pure and lives in mglrud/render/; this module only talks HTTP to
the daemon (mglrud/http.py serves it) and turns failures into one line.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mglrud.render import report
from mglrud.snapshot_json import SchemaError, SnapshotDoc, from_dict, read


class FetchError(Exception):
    pass


def fetch_snapshot(url: str, timeout: float = 10.0, target: str | None = None,
                   pid: int | None = None) -> SnapshotDoc:
    """GET URL/snapshot.json from a running `mglrud run`, read through the typed reader;
    raises FetchError with what to do. `target`/`pid` ask only for that part (the daemon
    filters; an older one sends everything, and the renderers filter it the same way)."""
    query = urllib.parse.urlencode([(k, v) for k, v in (("target", target), ("pid", pid)) if v is not None])
    full = url.rstrip("/") + "/snapshot.json" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(full, timeout=timeout) as r:
            return from_dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        raise FetchError(f"{full}: HTTP {e.code}; is this a mglrud daemon?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {full} ({reason}); start `mglrud run` or pass --url") from None
    except SchemaError as e:
        raise FetchError(f"{full} is not a mglrud snapshot ({e}); is this a mglrud daemon?") from None
    except ValueError as e:
        raise FetchError(f"{full} did not return JSON ({e}); is this a mglrud daemon?") from None


def read_maps(pid: int, procfs: str = "/proc") -> list[tuple[int, int, str]]:
    """/proc/PID/maps as (start, end, name), named as the /proc source names mappings; [] when unreadable
    (the process exited, or it runs on another host than the daemon)."""
    from mglrud.sources.smaps import mapping_name

    out = []
    try:
        text = Path(procfs, str(pid), "maps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 5:
            lo, _, hi = parts[0].partition("-")
            out.append((int(lo, 16), int(hi, 16), mapping_name(parts[5].strip() if len(parts) > 5 else "")))
    return out


def hotness_maps(snap: SnapshotDoc | dict, target: str | None,
                 pid: int | None) -> dict[int, list[tuple[int, int, str]]]:
    """/proc/PID/maps of the processes the BPF part of a snapshot has regions of (for names and per-mapping rows)."""
    tgids = {tgid for tgid, _ in read(snap).regions(target)}
    return {p: read_maps(p) for p in tgids if pid in (None, p)}


def report_main(args) -> int:
    """0 printed, 1 the daemon cannot be reached or has no data for the target/pid."""
    try:
        snap = fetch_snapshot(args.url, target=args.target, pid=args.pid)
        text = report.render(snap, target=args.target, pid=args.pid, maps=hotness_maps(snap, args.target, args.pid))
    except (FetchError, report.ReportError) as e:
        print(f"mglrud: report: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
