"""HTTP(S): /metrics, /snapshot.json, /-/healthy, /-/ready and a landing page at /.

Listens on 127.0.0.1:9746 unless configured otherwise (listen.address,
listen.port, --web.listen-address); binding beyond loopback is the user's
explicit choice, and an exporter-toolkit web config (mglrud/webconfig.py) adds
TLS, client certificates, basic auth and response headers. Requests only
render the published Snapshot, so a scrape never ages anything.

Who sees what (mglrud/redact.py, docs/security.md): addresses and file names
only on the root-only unix socket and over TCP to clients the web config
authenticates; any other TCP client gets the redacted snapshot and metrics.

Connections are bounded, and so is the time each may take (mglrud/listener.py: one
selector thread reads request heads under a total deadline, at most MAX_CONNECTIONS
open, a few worker threads answer); a response has RESPONSE_TIMEOUT seconds in total
to be sent, so a reader that stops reading is cut off.
"""

from __future__ import annotations

import html
import io
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler

from mglrud import __version__, snapshot_json
from mglrud.redact import RedactedView
from mglrud.basicauth import BasicAuth
from mglrud.exposition import Exposition
from mglrud.listener import Server
from mglrud.webconfig import WebConfig, WebConfigSource

log = logging.getLogger(__name__)

# Seconds to send one response, in total (the limits before that are listener.py's).
RESPONSE_TIMEOUT = 60.0
# /-/healthy fails when the newest snapshot is older than this many snapshot intervals
# (at least HEALTHY_FLOOR seconds: one slow cycle on a loaded host is not a sick daemon).
HEALTHY_INTERVALS = 3
HEALTHY_FLOOR = 30.0

ENDPOINTS = (
    ("/metrics", "Prometheus metrics (text 0.0.4, or OpenMetrics when asked; gzip when asked)"),
    ("/snapshot.json", "the latest snapshot as JSON"),
    ("/-/healthy", "200 while snapshots are fresh, 503 with the reason when the loop stalls"),
    ("/-/ready", "200 once the first snapshot is published, 503 before"),
)


def landing_page() -> bytes:
    rows = "".join(f'<li><a href="{p}">{p}</a>: {html.escape(d)}</li>\n' for p, d in ENDPOINTS)
    return (f"<!DOCTYPE html>\n<html><head><title>mglrud</title></head><body>\n<h1>mglrud</h1>\n"
            f"<p>Hot and cold memory per memcg and process, from the kernel's multi-gen LRU. "
            f"Version {html.escape(__version__)}.</p>\n<ul>\n{rows}</ul>\n</body></html>\n").encode()


class Site:
    """What the handler serves; the same for every connection."""

    def __init__(self, published, exposition: Exposition, web: WebConfigSource | None = None,
                 snapshot_interval: float = 10.0, wall=time.time):
        self.published = published
        self.exposition = exposition
        self.web = web
        self.snapshot_interval = snapshot_interval
        self.wall = wall
        self.auth = BasicAuth()
        # The redacted view, its own render cache: for TCP clients nobody authenticated
        self.redacted = RedactedView(published)
        self.redacted_exposition = Exposition(self.redacted, extra=exposition.extra, wall=exposition.wall)

    def full_view(self, web: WebConfig | None, unix: bool) -> bool:
        """Addresses and file names: to the unix socket's clients (root: the socket is 0600), and
        over TCP only to clients the web config authenticates -- every request has passed basic
        auth, or the TLS handshake required and verified a client certificate."""
        if unix:
            return True
        if web is None:
            return False
        tls = web.tls
        return bool(web.users) or (tls is not None and tls.client_auth_type == "RequireAndVerifyClientCert")

    def health(self) -> tuple[int, str]:
        snap = self.published.current
        if snap is None:
            return 200, "Healthy: starting, no snapshot yet (see /-/ready)\n"
        limit = max(HEALTHY_INTERVALS * self.snapshot_interval, HEALTHY_FLOOR)
        age = self.wall() - snap.taken_at
        if age > limit:
            return 503, (f"Unhealthy: the newest snapshot is {age:.0f}s old, more than {limit:g}s "
                         f"({HEALTHY_INTERVALS} x snapshot.interval {self.snapshot_interval:g}s, at least "
                         f"{HEALTHY_FLOOR:g}s): the aging loop is stuck or failing; see the log\n")
        return 200, f"Healthy: newest snapshot {max(age, 0.0):.1f}s old\n"

    def ready(self) -> tuple[int, str]:
        if self.published.current is None:
            return 503, "Not ready: no snapshot yet\n"
        return 200, "Ready\n"


class _Writer(io.RawIOBase):
    """wfile with a total deadline: a client that stops reading is cut off, not waited for."""

    def __init__(self, sock, deadline: float):
        self.sock = sock
        self.deadline = deadline

    def writable(self):
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("response deadline passed")
            self.sock.settimeout(left)
            sent += self.sock.send(view[sent:sent + (256 << 10)])
        return sent


class Handler(BaseHTTPRequestHandler):
    """One request whose head was already read (by the selector thread) into `head`."""

    server_version = f"mglrud/{__version__}"

    def __init__(self, sock, address, head: bytes, site: Site, web: WebConfig | None):
        self.site = site
        self.web = web
        self._head = head
        super().__init__(sock, address, None)

    def setup(self):
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _Writer(self.request, time.monotonic() + RESPONSE_TIMEOUT)

    def finish(self):
        pass  # the worker closes the socket

    def end_headers(self):
        for name, value in self.web.headers if self.web else ():
            self.send_header(name, value)
        super().end_headers()

    def do_HEAD(self):
        self.do_GET(body=False)

    def __getattr__(self, name):
        # Any other method (http.server looks up do_<METHOD>): 405 naming the two there are.
        # http.server's own answer, 501 Not Implemented, is a server error: it fired
        # 5xx alerts on a proxy in front of us for a client's POST (found by the fuzz test).
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self):
        self.close_connection = True
        self._send(405, "text/plain; charset=utf-8", b"method not allowed; use GET or HEAD\n",
                   extra=[("Allow", "GET, HEAD")])

    def do_GET(self, body: bool = True):
        if self.web is not None and self.web.users and not self.site.auth.check(
                self.web.user_hashes, self.headers.get("Authorization")):
            self._send(401, "text/plain; charset=utf-8", b"Unauthorized\n", body,
                       extra=[("WWW-Authenticate", "Basic")])
            return
        path = self.path.split("?", 1)[0]
        full = self.site.full_view(self.web, self.client_address[0] == "unix")
        if path == "/metrics":
            self._send_metrics(self.site.exposition if full else self.site.redacted_exposition, body)
        elif path == "/snapshot.json":
            snap = (self.site.published if full else self.site.redacted).current
            try:
                query = snapshot_json.parse_query(self.path.partition("?")[2])
            except ValueError as e:
                self._send(400, "text/plain; charset=utf-8", f"/snapshot.json: {e}\n".encode(), body)
                return
            if snap is None:
                self._send(503, "text/plain; charset=utf-8", b"no snapshot yet\n", body)
            else:
                self._send(200, "application/json", snapshot_json.to_json_pieces(snap, query), body)
        elif path == "/-/healthy":
            code, text = self.site.health()
            self._send(code, "text/plain; charset=utf-8", text.encode(), body)
        elif path == "/-/ready":
            code, text = self.site.ready()
            self._send(code, "text/plain; charset=utf-8", text.encode(), body)
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", landing_page(), body)
        else:
            self._send(404, "text/plain; charset=utf-8",
                       b"not found; try /metrics, /snapshot.json, /-/healthy or /-/ready\n", body)

    def _send_metrics(self, exposition: Exposition, body: bool) -> None:
        data, headers = exposition.body(self.headers.get("Accept"), self.headers.get("Accept-Encoding"))
        try:
            self._send(200, headers[0][1], data, body, extra=headers[1:] + [("Vary", "Accept, Accept-Encoding")])
        finally:
            del data  # (the pieces may be the only reference to a text the cache let go of)
            exposition.sent()

    def _send(self, code: int, ctype: str, data: bytes | list[bytes], body: bool = True, extra=()) -> None:
        """`data`: the body, or its pieces in order (written one after another, never joined)."""
        pieces = [data] if isinstance(data, bytes) else data
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(map(len, pieces))))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if body:
            for piece in pieces:
                self.wfile.write(piece)

    def log_message(self, fmt, *args):
        log.debug("http %s " + fmt, self.client_address[0], *args)


def serve(address: str, port: int, published, *, exposition: Exposition | None = None,
          web: WebConfigSource | None = None, snapshot_interval: float = 10.0) -> tuple[Server, threading.Thread]:
    """Bind now (so errors surface at start) and serve from a background thread. An `address`
    that is an absolute path is a unix socket (the full view, no web config; `port` unused)."""
    site = Site(published, exposition or Exposition(published), web, snapshot_interval)
    server = Server(address, port, lambda sock, addr, head, cfg: Handler(sock, addr, head, site, cfg), web)
    server.site = site
    thread = threading.Thread(target=server.serve_forever, name=f"mglrud-http{'-unix' if server.path else ''}",
                              daemon=True)
    thread.start()
    return server, thread
