"""The I/O edge of the commands that read a running daemon (`mglrud report`, `heatmap`): fetch /snapshot.json.

Rendering is pure and lives in mglrud/render/; this module only talks HTTP to
the daemon (mglrud/http.py serves it) and turns failures into one line.

Where: `--url`, else the daemon's unix socket (DEFAULT_SOCKET, the shipped
config's `listen.socket`) when this user may connect to it -- root: only there
are addresses and file names served (mglrud/redact.py) -- else DEFAULT_URL.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mglrud.config import DEFAULT_URL
from mglrud.render import report
from mglrud.snapshot_json import SchemaError, SnapshotDoc, from_dict, read


DEFAULT_SOCKET = "/run/mglrud/mglrud.sock"
REDACTED_NOTE = ("this daemon gave the redacted snapshot (no addresses or file names: docs/security.md); "
                 f"run as root to use its socket {DEFAULT_SOCKET}, or pass --url with credentials")


class FetchError(Exception):
    pass


def default_url(url: str | None, sock: str = DEFAULT_SOCKET) -> str:
    """`url` when given; else unix:SOCK when it is a socket this user may connect to; else DEFAULT_URL."""
    if url:
        return url
    try:
        if stat.S_ISSOCK(os.stat(sock).st_mode) and os.access(sock, os.W_OK):
            return f"unix:{sock}"
    except OSError:
        pass
    return DEFAULT_URL


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _get_unix(path: str, timeout: float, query: str = "") -> bytes:
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", "/snapshot.json" + (f"?{query}" if query else ""))
        r = conn.getresponse()
        if r.status != 200:
            raise urllib.error.HTTPError(f"unix:{path}", r.status, r.reason, r.headers, None)
        return r.read()
    finally:
        conn.close()


def fetch_json(url: str, timeout: float = 10.0, target: str | None = None, pid: int | None = None,
               form: str | None = None, found: int | None = None) -> dict:
    """GET URL/snapshot.json (URL http(s)://HOST:PORT or unix:PATH) from a running `mglrud run`, as
    the decoded JSON document, unchecked (demo/guest.py keeps it whole); raises FetchError with what
    to do. `target`/`pid` ask only for that part (the daemon filters; an older one sends everything,
    and the renderers filter it the same way)."""
    # form=columns: the region cells one list per field (a third of the bytes); a daemon older
    # than it answers HTTP 400 (unknown parameter), and is asked again without it
    # found=N: at most N of each region's `found` (what the caller reads of them)
    query = urllib.parse.urlencode([(k, v) for k, v in (("target", target), ("pid", pid), ("form", form),
                                                        ("found", found if form is not None else None))
                                    if v is not None])
    unix = url[len("unix:"):] if url.startswith("unix:") else None
    full = url if unix else url.rstrip("/") + "/snapshot.json" + (f"?{query}" if query else "")
    try:
        if unix:
            return json.loads(_get_unix(unix, timeout, query))
        with urllib.request.urlopen(full, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 400 and form is not None:  # a daemon older than ?form=
            return fetch_json(url, timeout, target, pid, form=None, found=None)
        raise FetchError(f"{full}: HTTP {e.code}; is this a mglrud daemon?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {full} ({reason}); start `mglrud run` or pass --url") from None
    except ValueError as e:
        raise FetchError(f"{full} did not return JSON ({e}); is this a mglrud daemon?") from None


def fetch_snapshot(url: str, timeout: float = 10.0, target: str | None = None, pid: int | None = None,
                   form: str | None = "columns", found: int | None = None) -> SnapshotDoc:
    """fetch_json() read through the typed reader (in the compact columns form unless form=None);
    FetchError also when it is not a mglrud snapshot."""
    doc = fetch_json(url, timeout, target, pid, form, found)
    try:
        return from_dict(doc)
    except SchemaError as e:
        raise FetchError(f"{url} is not a mglrud snapshot ({e}); is this a mglrud daemon?") from None


def read_maps(pid: int, procfs: str = "/proc") -> list[tuple[int, int, str]]:
    """/proc/PID/maps as (start, end, name), named as the /proc source names mappings; [] when unreadable
    (the process exited, or it runs on another host than the daemon)."""
    from mglrud.sources.smaps import mapping_name

    out = []
    try:
        text = Path(procfs, str(pid), "maps").read_text(errors="backslashreplace")  # file names: any bytes
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
        # the report reads no `found` entries (the newest idle age is idle_seconds)
        snap = fetch_snapshot(default_url(args.url), target=args.target, pid=args.pid, found=0)
        if snap.redacted:
            print(f"mglrud: report: {REDACTED_NOTE}", file=sys.stderr)
        text = report.render(snap, target=args.target, pid=args.pid, maps=hotness_maps(snap, args.target, args.pid))
    except (FetchError, report.ReportError) as e:
        print(f"mglrud: report: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
