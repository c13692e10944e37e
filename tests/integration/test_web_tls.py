"""`mglrud run --web.config.file` with a CA made by openssl in the test, on 127.0.0.1: TLS, client
certificates, basic auth, headers, re-reading the file on change, and bad files refused at start.

The daemon reads a copy of a captured fixture tree (aging.dry_run: nothing is written), listens
on --web.listen-address 127.0.0.1:PORT, and is stopped by its pid. Every wait is bounded.
"""

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.daemonproc import DaemonProc, fixture_flags  # noqa: E402
from tests.tlsca import CA  # noqa: E402

from mglrud import cli  # noqa: E402

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
EXAMPLE = REPO / "deploy" / "web-config.example.yml"
ROOTS = sorted(p.parent.parent for p in (REPO / "tests/fixtures").glob("roots/*/debugfs/lru_gen"))
WAIT = 120

CONFIG = """
aging: {interval: 2s, dry_run: true}
snapshot: {interval: 1s}
metrics: {cold_thresholds: [1s, 2s]}
sources: [lru_gen]
targets: [{name: all, memcg: "/**"}]
"""


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _web_config(ca: CA, users: dict[str, str], auth: str = "RequireAndVerifyClientCert") -> str:
    lines = ["tls_server_config:", f"  cert_file: {ca.server_crt}", f"  key_file: {ca.server_key}",
             f"  client_ca_file: {ca.ca_crt}", f"  client_auth_type: {auth}",
             "http_server_config:", "  headers:", "    X-Frame-Options: deny", "basic_auth_users:"]
    lines += [f"  {u}: {h}" for u, h in users.items()]
    return "\n".join(lines) + "\n"


def _client_context(ca: CA, cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.ca_crt))
    if cert:
        ctx.load_cert_chain(str(ca.client_crt), str(ca.client_key))
    return ctx


def _get(port: int, ctx: ssl.SSLContext, user: str | None = None, password: str = "", path: str = "/metrics"):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        headers = {}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory):
    if not ROOTS:
        pytest.fail("no captured fixture root in tests/fixtures/roots")
    tmp = tmp_path_factory.mktemp("web-tls")
    ca = CA.make(tmp / "ca")
    root = tmp / "root"
    shutil.copytree(ROOTS[0], root)
    (tmp / "mglrud.yaml").write_text(CONFIG)
    web = tmp / "web.yml"
    web.write_text(_web_config(ca, {"prometheus": _hash("s3cret")}))
    port = _free_port()
    d = DaemonProc.start(["-c", str(tmp / "mglrud.yaml"), "--web.listen-address", f"127.0.0.1:{port}",
                          "--web.config.file", str(web), *fixture_flags(root)], tmp / "mglrud.log", wait=WAIT)
    try:
        assert d.port == port
        assert f"serving https://127.0.0.1:{port}/metrics" in d.log_text()
        yield d, ca, web
    finally:
        d.stop()


def test_client_certificate_and_password_get_metrics_with_the_configured_header(tls_daemon):
    d, ca, _ = tls_daemon
    status, headers, body = _get(d.port, _client_context(ca), "prometheus", "s3cret")
    assert status == 200
    assert b"mglrud_build_info{" in body and b"mglrud_memcg_resident_bytes{" in body
    assert b"process_resident_memory_bytes " in body and b"mglrud_config_last_reload_successful 1.0" in body
    assert headers["X-Frame-Options"] == "deny"
    status, _, body = _get(d.port, _client_context(ca), "prometheus", "s3cret", path="/-/ready")
    assert (status, body) == (200, b"Ready\n")


def test_wrong_password_or_none_gets_401_with_www_authenticate(tls_daemon):
    d, ca, _ = tls_daemon
    for user, password in (("prometheus", "wrong"), ("nobody", "s3cret"), (None, "")):
        status, headers, body = _get(d.port, _client_context(ca), user, password)
        assert status == 401, (user, password)
        assert headers["WWW-Authenticate"] == "Basic"
        assert headers["X-Frame-Options"] == "deny"
        assert b"mglrud" not in body


def test_no_client_certificate_is_refused_in_the_handshake(tls_daemon):
    d, ca, _ = tls_daemon
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3: the server's refusal (certificate required) arrives as an alert on the first read.
        _get(d.port, _client_context(ca, cert=False), "prometheus", "s3cret")


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_daemon):
    d, _, _ = tls_daemon
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    assert not data.startswith(b"HTTP/"), data[:200]
    assert b"mglrud_" not in data


def test_the_file_is_re_read_on_change_and_a_bad_edit_keeps_the_previous_one(tls_daemon):
    d, ca, web = tls_daemon
    good = web.read_text()
    try:
        web.write_text(_web_config(ca, {"prometheus": _hash("n3w")}))
        deadline = time.monotonic() + WAIT
        while _get(d.port, _client_context(ca), "prometheus", "n3w")[0] != 200:
            assert time.monotonic() < deadline, "the new password was never accepted"
            time.sleep(0.2)
        assert _get(d.port, _client_context(ca), "prometheus", "s3cret")[0] == 401
        # A bad edit: the previous file stays in force, and the log says so once.
        web.write_text(_web_config(ca, {"prometheus": "not-a-bcrypt-hash"}))
        for _ in range(5):
            assert _get(d.port, _client_context(ca), "prometheus", "n3w")[0] == 200
        log = d.log_text()
        assert log.count("basic_auth_users.prometheus: is not a bcrypt hash") == 1, log[-3000:]
        assert "keeping the previous one" in log
    finally:
        web.write_text(good)
    deadline = time.monotonic() + WAIT
    while _get(d.port, _client_context(ca), "prometheus", "s3cret")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


# ---------------------------------------------------------------- the shipped example, bad files at start

def test_promtool_and_mglrud_accept_the_shipped_example(tmp_path):
    ca = CA.make(tmp_path)
    shutil.copy(ca.server_crt, tmp_path / "mglrud.crt")
    shutil.copy(ca.server_key, tmp_path / "mglrud.key")
    shutil.copy(EXAMPLE, tmp_path / "web.yml")
    r = subprocess.run([PROMTOOL, "check", "web-config", str(tmp_path / "web.yml")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr
    from mglrud import webconfig
    cfg = webconfig.load(str(tmp_path / "web.yml"))
    assert cfg.tls.client_auth == ssl.CERT_REQUIRED and cfg.context is not None
    assert dict(cfg.users).keys() == {"prometheus"}


def _bad(ca: CA, tmp: Path) -> list[tuple[str, str, str]]:
    """(name, web config text, the start of the one line mglrud must print)."""
    good = _web_config(ca, {"prometheus": _hash("x")}, auth="RequireAndVerifyClientCert")
    unreadable = tmp / "a-directory.crt"  # unreadable even for root, which these tests may run as
    unreadable.mkdir(exist_ok=True)
    empty = tmp / "empty.crt"
    empty.write_text("")
    return [
        ("unknown key", good + "tls_server_confg: {}\n", "tls_server_confg: unknown key"),
        ("unknown tls key", good.replace("  client_auth_type:", "  client_auth_typo: x\n  client_auth_type:"),
         "tls_server_config.client_auth_typo: unknown key"),
        ("missing cert", good.replace(str(ca.server_crt), str(tmp / "absent.crt")),
         "tls_server_config.cert_file: cannot read"),
        ("unreadable cert", good.replace(str(ca.server_crt), str(unreadable)),
         "tls_server_config.cert_file: cannot read"),
        ("not a cert", good.replace(str(ca.server_crt), str(empty)),
         "tls_server_config.cert_file: "),
        ("bad bcrypt hash", good.replace(good.splitlines()[-1], "  prometheus: $2y$10$tooshort"),
         "basic_auth_users.prometheus: is not a bcrypt hash"),
        ("key not matching cert", good.replace(str(ca.server_key), str(ca.other_key)),
         "tls_server_config.key_file: "),
        ("header not allowed", good.replace("X-Frame-Options: deny", "X-Powered-By: me"),
         "http_server_config.headers.X-Powered-By: can not be configured"),
        ("unsupported auth type", good.replace("RequireAndVerifyClientCert", "RequireAnyClientCert"),
         "tls_server_config.client_auth_type: RequireAnyClientCert is not supported"),
    ]


def test_bad_web_configs_one_line_naming_the_key_exit_2(tmp_path, capsys):
    ca = CA.make(tmp_path / "ca")
    for name, text, want in _bad(ca, tmp_path):
        path = tmp_path / f"{name.replace(' ', '-')}.yml"
        path.write_text(text)
        assert cli.main(["run", "--web.config.file", str(path), "--listen.port", "0"]) == 2, name
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, (name, err)
        assert err.startswith(f"mglrud: config: {path}: {want}"), (name, err)
    # mismatched key: the message says so
    path = tmp_path / "key-not-matching-cert.yml"
    cli.main(["run", "--web.config.file", str(path)])
    assert "does not match the certificate in cert_file" in capsys.readouterr().err


def test_client_allowed_sans(tmp_path):
    """The client certificate carries DNS:prometheus.test: allowed when listed, refused when not."""
    from mglrud import http as mhttp, webconfig
    from mglrud.collectors import Published

    ca = CA.make(tmp_path / "ca")
    results = {}
    for sans in (["prometheus.test"], ["other.test"]):
        path = tmp_path / f"web-{sans[0]}.yml"
        text = _web_config(ca, {}).replace("basic_auth_users:\n", "")  # no users: the SANs alone decide
        path.write_text(text.replace("http_server_config:", f"  client_allowed_sans: {sans}\nhttp_server_config:"))
        srv, _ = mhttp.serve("127.0.0.1", 0, Published(),
                             web=webconfig.WebConfigSource(str(path), webconfig.load(str(path))))
        try:
            try:
                results[sans[0]] = _get(srv.server_port, _client_context(ca), path="/-/healthy")[0]
            except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as e:
                results[sans[0]] = type(e).__name__
        finally:
            srv.shutdown()
            srv.server_close()
    assert results["prometheus.test"] == 200
    assert results["other.test"] != 200 and not isinstance(results["other.test"], int), results


def test_half_finished_tls_handshakes_hold_no_thread_and_are_cut_off(tmp_path, monkeypatch):
    """30 connections that start a TLS handshake and stall (slowloris on TLS): scrapes with a
    client certificate keep answering, and each stalled one is closed at the request deadline."""
    from mglrud import http as mhttp, webconfig
    from mglrud.collectors import Published

    from mglrud import listener

    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 2.0)
    ca = CA.make(tmp_path / "ca")
    path = tmp_path / "web.yml"
    path.write_text(_web_config(ca, {}).replace("basic_auth_users:\n", ""))
    srv, _ = mhttp.serve("127.0.0.1", 0, Published(),
                         web=webconfig.WebConfigSource(str(path), webconfig.load(str(path))))
    stalled = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", srv.server_port), timeout=30)
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
            stalled.append(s)
        for _ in range(10):
            assert _get(srv.server_port, _client_context(ca), path="/-/ready")[0] == 503  # no snapshot: 503, served
        for s in stalled:
            try:
                assert s.recv(4096) == b""  # closed by the deadline, without an answer
            except ConnectionResetError:
                pass
    finally:
        for s in stalled:
            s.close()
        srv.shutdown()
        srv.server_close()
