"""HTTP: /metrics (Prometheus text format 0.0.4) and /snapshot.json (the latest Snapshot).

Listens on 127.0.0.1:9746 unless configured otherwise (listen.address,
listen.port); binding beyond loopback is the user's explicit choice. Requests
only render the published Snapshot, so a scrape never ages anything.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mglrud import snapshot_json

log = logging.getLogger(__name__)

# Seconds a connection may stay silent: a client that connects and sends nothing
# (or stops reading) must not hold its thread forever.
REQUEST_TIMEOUT = 30.0

INDEX = b"""<html><head><title>mglrud</title></head><body><h1>mglrud</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/snapshot.json">/snapshot.json</a></p></body></html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog: socketserver's default of 5 drops connections when many scrapers
    # (or a Prometheus HA pair plus dashboards) connect at once; they then wait for SYN
    # retransmits, seconds each (bench/scrape_load.py).
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A scraper that gave up and closed its socket is not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("http %s: %s", client_address[0], sys.exc_info()[1])
            return
        log.exception("http %s: request failed", client_address[0])


def serve(address: str, port: int, registry, published) -> tuple[_Server, threading.Thread]:
    """Bind now (so errors surface at start) and serve from a background thread."""

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/snapshot.json":
                snap = published.current
                if snap is None:
                    self._send(503, "text/plain; charset=utf-8", b"no snapshot yet\n")
                else:
                    self._send(200, "application/json", snapshot_json.to_json(snap).encode())
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", INDEX)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics or /snapshot.json\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            log.debug("http %s " + fmt, self.client_address[0], *args)

    server_class = _Server
    if ipaddress.ip_address(address).version == 6:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_class((address, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="mglrud-http", daemon=True)
    thread.start()
    return server, thread
