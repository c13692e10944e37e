"""Fuzzing the HTTP server with Hypothesis (issue 18): whatever a client sends, no 5xx, no
traceback, no hang, no memory kept, and the server answers a good request after every case.

Two real servers run as child processes on 127.0.0.1 (tests/bpf_replay.py serving the replayed
BPF snapshot, so /snapshot.json's filters have regions to filter): one without a web config
(the redacted view) and one with basic auth (the Authorization path, then the full view). Each
case is one connection: a request line (methods, paths with query strings -- /snapshot.json's
target, pid, offset and limit among them --, versions), headers (Authorization, Accept-Encoding,
Accept with OpenMetrics, Content-Length, Host, junk), a body, with LF or CRLF, and sometimes cut
short, blown past the head limit (16 KiB), given 150 headers, or plain bytes. Per case:

- the answer is a status line below 500, an HTTP/0.9 body (a request line without a version)
  that is not a 5xx error page, or a closed connection;
- nothing reaches the child's stderr (a traceback, a thread that died, any warning);
- the case ends within its timeout (CASE_TIMEOUT seconds, socket timeouts and a deadline: a
  hang fails the case, the server's speed is not asserted);
- a good GET /metrics is answered 200 right after.

At the end each child's RSS has grown by less than RSS_BOUND over the whole run (measured after
a warm-up of 200 requests of every kind, which fills the render caches and thread stacks).

Cases are seeded (the same run every time). `make test` runs MGLRUD_HTTP_FUZZ_EXAMPLES (default
1000); the full run is MGLRUD_HTTP_FUZZ_EXAMPLES=10000 (README, Reliability, has its time).
"""

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mglrud-hypothesis"))

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("MGLRUD_HTTP_FUZZ_EXAMPLES", "1000"))
CASE_TIMEOUT = 15.0  # seconds for one case, connection to close; the server's own deadlines are 10 s
RSS_BOUND = 8 << 20  # bytes the server's RSS may grow over the run, after the warm-up
USER, PASSWORD = "prometheus", "s3cret"

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "get", "GET\x00",
           "PRI", "", "G\tET", "\xff\xfe"]
PATHS = ["/metrics", "/snapshot.json", "/-/healthy", "/-/ready", "/", "/favicon.ico", "*", "//metrics", "/metrics/",
         "/../../etc/passwd", "/%2e%2e/%2e%2e/", "http://127.0.0.1/metrics", "/snapshot.json/", "/SNAPSHOT.JSON",
         "/metrics%00", "/\x00", "/" + "a" * 5000, "/-/", "metrics", "/metrics#frag"]
QUERY_KEYS = ["target", "pid", "offset", "limit", "page", "pid[]", "", "target ", "%70id", "x"]
QUERY_VALUES = ["w", "m", "", "1", "0", "-1", "4294967296", "9" * 5000, "%00", "%ff", "w%00", "\u0661",
                "1e3", " 1", "a&b", "=", "%", "%zz", "+", "m;x"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1x", "", "HTTP/", "http/1.1", "HTTP/1",
            "HTTP/99999999999999999999.0", "HTTP/1.1 extra", "HTTP/1.-1"]
ACCEPT = ["application/openmetrics-text; version=1.0.0; charset=utf-8", "application/openmetrics-text;version=0.0.1",
          "application/openmetrics-text", "application/openmetrics-text; version=9.9.9",
          "application/openmetrics-text;q=0.5, text/plain;version=0.0.4;q=1", "text/plain;version=0.0.4", "*/*",
          "application/openmetrics-text; version=1.0.0;q=abc", ";;;", "application/openmetrics-text;" * 200, ""]
ENCODINGS = ["gzip", "gzip;q=0", "identity", "*", "br, gzip;q=0.5", "gzip;q=abc", "GZIP", "deflate", "gzip, gzip",
             "x" * 3000, ""]
LENGTHS = ["0", "10", "-1", "99999999999999999999", "abc", "", "1e3", " 5", "5, 5"]


def _auth():
    good = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return st.one_of(
        st.sampled_from([f"Basic {good}", f"basic {good}", "Basic " + base64.b64encode(b"prometheus:wrong").decode(),
                         "Basic " + base64.b64encode(b"nobody:x").decode(), "Basic !!!", "Basic", "Basic ",
                         "Bearer x", "Basic " + "A" * 10000, "Basic " + base64.b64encode(b"no-colon").decode(),
                         f"Basic {good}=", f"Basic {good[:-1]}"]),
        st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()))


def _query():
    pair = st.tuples(st.sampled_from(QUERY_KEYS), st.one_of(st.sampled_from(QUERY_VALUES),
                                                            st.text(max_size=8))).map(lambda kv: "=".join(kv))
    return st.one_of(st.just(""), st.lists(pair, max_size=10).map(lambda ps: "?" + "&".join(ps)),
                     st.text(max_size=30).map(lambda t: "?" + t))


def _header():
    any_text = st.text(max_size=30)
    return st.one_of(
        st.tuples(st.just("Authorization"), _auth()),
        st.tuples(st.just("Accept"), st.one_of(st.sampled_from(ACCEPT), any_text)),
        st.tuples(st.just("Accept-Encoding"), st.one_of(st.sampled_from(ENCODINGS), any_text)),
        st.tuples(st.just("Content-Length"), st.one_of(st.sampled_from(LENGTHS), any_text)),
        st.tuples(st.sampled_from(["Host", "Connection", "Transfer-Encoding", "Expect", "Upgrade", "X-Forwarded-For"]),
                  st.one_of(st.sampled_from(["127.0.0.1", "close", "keep-alive", "chunked", "100-continue", "h2c"]),
                            any_text)),
        st.tuples(st.text(max_size=20), any_text))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


@st.composite
def requests(draw) -> tuple[bool, bytes]:
    """(to the server with basic auth?, the bytes sent)."""
    auth = draw(st.booleans())
    kind = draw(st.integers(0, 19))
    if kind == 0:  # plain bytes
        return auth, draw(st.binary(max_size=600))
    if kind < 12:  # well-formed, so that the paths, filters and headers are reached
        method = draw(st.sampled_from(["GET"] * 6 + ["HEAD", "POST"]))
        path = draw(st.sampled_from(PATHS[:5] + ["/snapshot.json"] * 5)) + draw(_query())
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
        line = f"{method} {path} {version}"
        headers = draw(st.lists(_header(), max_size=6))
        if auth and draw(st.integers(0, 3)):
            headers.insert(0, ("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()))
        shape = draw(st.sampled_from(["plain"] * 8 + ["cut", "oversized"]))
    else:
        method = draw(st.one_of(st.sampled_from(METHODS), st.text(max_size=10)))
        path = draw(st.one_of(st.sampled_from(PATHS), st.text(max_size=40))) + draw(_query())
        version = draw(st.sampled_from(VERSIONS))
        line = " ".join(x for x in (method, path, version) if x or draw(st.booleans()))
        headers = draw(st.lists(_header(), max_size=8))
        shape = draw(st.sampled_from(["plain"] * 6 + ["cut", "oversized", "many headers", "no end"]))
    if shape == "oversized":
        headers.append(("X-Big", "a" * draw(st.integers(16 << 10, 40 << 10))))
    elif shape == "many headers":
        headers += [(f"X-{i}", "v") for i in range(150)]
    # headers of random text may hold CR/LF of their own: the well-formed kind keeps CRLF lines
    eol = "\r\n" if kind < 12 else draw(st.sampled_from(["\r\n", "\n", "\r\n", "\r"]))
    head = line + eol + "".join(f"{k}: {v}{eol}" for k, v in headers) + ("" if shape == "no end" else eol)
    data = _encode(head) + draw(st.binary(max_size=300))
    if shape == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    return auth, data


STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
HTTP2 = re.compile(rb"[^\n]*\sHTTP/0*([2-9]|[1-9][0-9]+)\.[0-9]+\s*(\n|$)", re.ASCII)  # a major version >= 2


class Child:
    """tests/bpf_replay.py serving on 127.0.0.1: its port, stderr (a file) and RSS."""

    def __init__(self, tmp: Path, name: str, web_config: str = ""):
        self.stderr_path = tmp / f"{name}.stderr"
        self.stderr = open(self.stderr_path, "wb")
        argv = [sys.executable, str(REPO / "tests" / "bpf_replay.py"), "--port", "0", "--seconds", "3600"]
        if web_config:
            argv += ["--web-config", web_config]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, cwd=tmp,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        line = self.proc.stdout.readline().decode()  # bounded: the child prints it or exits
        m = re.search(r"127\.0\.0\.1:(\d+)/", line)
        assert m, f"{name}: no port in {line!r}; stderr: {self.stderr_path.read_text()}"
        self.port = int(m.group(1))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
        raise AssertionError("no VmRSS")

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.stat().st_size else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def exchange(port: int, data: bytes, timeout: float = CASE_TIMEOUT) -> bytes:
    """Send `data`, end the sending side, read the answer until the server closes; a hang
    (no close within `timeout`) raises TimeoutError."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        answer = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no close within {timeout:g} s")
                s.settimeout(left)
                chunk = s.recv(1 << 16)
                if not chunk:
                    return answer
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return answer  # the server cut it (an oversized head, a request it read only part of)
        except socket.timeout:
            raise TimeoutError(f"no close within {timeout:g} s") from None


def good(port: int, auth: bool) -> int:
    extra = b""
    if auth:
        extra = b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()) + b"\r\n"
    answer = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n")
    m = STATUS.match(answer)
    return int(m.group(1)) if m else -1


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-fuzz")
    web = tmp / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: a fuzz case is not a login
    web.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    children = {}
    try:
        children[False] = Child(tmp, "plain")
        children[True] = Child(tmp, "auth", str(web))
        yield children
    finally:
        for c in children.values():
            c.stop()


SEEN: dict = {}


def _run(children: dict) -> None:
    @seed(18)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(requests())
    def case(req):
        auth, data = req
        child = children[auth]
        answer = exchange(child.port, data)
        m = STATUS.match(answer)
        if m:
            code = int(m.group(1))
            assert code < 500, (code, data[:300], answer[:300])
            SEEN[code] = SEEN.get(code, 0) + 1
        elif answer:
            # HTTP/0.9: a request line without a version is answered with the body alone; so is
            # 505 HTTP Version Not Supported, the one 5xx allowed, for a well-formed HTTP/2 or later
            # (RFC 9110 15.6.6: the client's version, not a server fault)
            error = re.search(rb"Error code: (\d+)", answer)
            if error and error.group(1) == b"505":
                assert HTTP2.match(data), (data[:300], answer[:300])
            else:
                assert not error or not error.group(1).startswith(b"5"), (data[:300], answer[:300])
            SEEN["0.9"] = SEEN.get("0.9", 0) + 1
        else:
            SEEN["closed"] = SEEN.get("closed", 0) + 1
        assert not child.errors(), child.errors()[-2000:]
        assert good(child.port, auth) == 200, data[:300]

    case()


def test_the_server_survives_seeded_fuzzed_requests(servers):
    """EXAMPLES seeded cases; no 5xx, traceback or hang, RSS bounded, a good request after each."""
    warm = [b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\nAccept-Encoding: gzip\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
            b"GET /snapshot.json HTTP/1.1\r\n\r\n", b"GET /snapshot.json?target=w&limit=1 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n", b"GET /x HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", b"\x00\xff\r\n\r\n"]
    for auth, child in servers.items():
        creds = b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()) + b"\r\n"
        for i in range(200):
            w = warm[i % len(warm)]
            exchange(child.port, w.replace(b"\r\n", b"\r\n" + creds, 1) if auth and i % 2 else w)
        assert good(child.port, auth) == 200
    before = {auth: c.rss() for auth, c in servers.items()}
    SEEN.clear()
    started = time.monotonic()
    _run(servers)
    took = time.monotonic() - started
    after = {auth: c.rss() for auth, c in servers.items()}
    cases = sum(SEEN.values())
    print(f"{cases} cases in {took:.1f} s; answers {dict(sorted(SEEN.items(), key=str))}; RSS before/after "
          + ", ".join(f"{'auth' if a else 'plain'} {before[a] >> 10}/{after[a] >> 10} KiB" for a in servers))
    assert cases >= min(EXAMPLES, 100)
    assert SEEN.get(200, 0) > cases // 20 and SEEN.get(400, 0) > cases // 20  # it reached both kinds of answer
    for auth, c in servers.items():
        assert after[auth] - before[auth] < RSS_BOUND, (auth, before[auth], after[auth])
        assert c.proc.poll() is None and not c.errors()
