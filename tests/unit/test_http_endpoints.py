"""http.py's endpoints over a real socket: /-/ready, /-/healthy, the landing page, /metrics content
negotiation (OpenMetrics, gzip) as client_python does it, and HEAD."""

import dataclasses
import gzip
import http.client

import pytest

from mglrud import __version__, http as mhttp
from mglrud.collectors import Published
from mglrud.exposition import Exposition
from mglrud.model import Snapshot

NOW = 1_800_000_000.0


def _snapshot(taken_at: float) -> Snapshot:
    fields = {f.name: f for f in dataclasses.fields(Snapshot)}
    kw = {}
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw[name] = taken_at if name == "taken_at" else ()
    return Snapshot(**kw)


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture
def site():
    published = Published()
    clock = Clock()
    srv, _ = mhttp.serve("127.0.0.1", 0, published, exposition=Exposition(published, wall=clock),
                         snapshot_interval=20.0)
    srv.site.wall = clock
    yield srv.server_port, published, clock
    srv.shutdown()
    srv.server_close()


def _req(port: int, path: str, method: str = "GET", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_ready_until_the_first_snapshot_then_healthy_until_it_is_stale(site):
    port, published, clock = site
    status, _, body = _req(port, "/-/ready")
    assert (status, body) == (503, b"Not ready: no snapshot yet\n")
    published.publish(_snapshot(NOW - 5))
    assert _req(port, "/-/ready")[:3:2] == (200, b"Ready\n")
    status, _, body = _req(port, "/-/healthy")
    assert status == 200 and body.startswith(b"Healthy: newest snapshot 5.0s old")
    clock.now = NOW + 55  # 60 s old: within 3 x 20 s
    assert _req(port, "/-/healthy")[0] == 200
    clock.now = NOW + 56  # 61 s old
    status, _, body = _req(port, "/-/healthy")
    assert status == 503
    assert body.startswith(b"Unhealthy: the newest snapshot is 61s old, more than 60s (3 x snapshot.interval 20s")
    published.publish(_snapshot(clock.now))
    assert _req(port, "/-/healthy")[0] == 200


def test_landing_page_lists_the_endpoints_and_the_version(site):
    port, _, _ = site
    status, headers, body = _req(port, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    for path in ("/metrics", "/snapshot.json", "/-/healthy", "/-/ready"):
        assert f'<a href="{path}">'.encode() in body
    assert f"Version {__version__}".encode() in body


def test_metrics_negotiates_openmetrics_and_gzip_and_head_sends_no_body(site):
    port, published, _ = site
    published.publish(_snapshot(NOW - 1))
    status, headers, plain = _req(port, "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in headers and b"mglrud_snapshot_age_seconds 1.0\n" in plain
    status, headers, zipped = _req(port, "/metrics", **{"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip" and gzip.decompress(zipped) == plain
    assert int(headers["content-length"]) == len(zipped)
    status, headers, om = _req(port, "/metrics", Accept="application/openmetrics-text;version=1.0.0")
    assert headers["content-type"].startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")
    status, headers, body = _req(port, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(plain)
    assert _req(port, "/nothing")[0] == 404
