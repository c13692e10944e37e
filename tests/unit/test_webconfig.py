"""mglrud/webconfig.py without sockets: the exporter-toolkit format parsed as the toolkit does
(defaults, relative paths, what it refuses), Go cipher names mapped to OpenSSL's, basic auth
checked with bcrypt, cached, and unknown users compared against a decoy; --web.listen-address."""

import base64

import bcrypt
import pytest

from mglrud import basicauth, cli, webconfig
from mglrud.config import ConfigError

P = "/etc/mglrud/web.yml"


def test_no_tls_section_means_plain_http_and_defaults_like_the_toolkit():
    cfg = webconfig.parse("basic_auth_users: {}\n", P)
    assert cfg.tls is None and cfg.users == () and cfg.headers == ()
    cfg = webconfig.parse("tls_server_config: {cert_file: a.crt, key_file: /k/a.key}\n", P)
    assert cfg.tls.cert_file == "/etc/mglrud/a.crt"  # relative to the file's directory
    assert cfg.tls.key_file == "/k/a.key"
    assert cfg.tls.min_version.name == "TLSv1_2" and cfg.tls.max_version.name == "TLSv1_3"
    assert cfg.tls.prefer_server_cipher_suites is True
    assert webconfig.parse("", P) == webconfig.WebConfig(path=P)


def test_cipher_suites_curves_and_versions():
    cfg = webconfig.parse("""tls_server_config:
  cert_file: a.crt
  key_file: a.key
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  curve_preferences: [X25519]
  min_version: TLS13
""", P)
    assert cfg.tls.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256",)  # the TLS 1.3 name changes nothing, as in Go
    assert cfg.tls.curve == "X25519" and cfg.tls.min_version.name == "TLSv1_3"


@pytest.mark.parametrize("text,line", [
    ("tls_server_config: {cert_file: a.crt}\n", "tls_server_config.key_file: is missing"),
    ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [RC4]}\n",
     "tls_server_config.cipher_suites[0]: unknown cipher: RC4"),
    ("tls_server_config: {cert_file: a, key_file: b, curve_preferences: [X25519, CurveP256]}\n",
     "tls_server_config.curve_preferences: mglrud can set one curve"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS14}\n", "tls_server_config.min_version: must be"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}\n",
     "tls_server_config.min_version: is above max_version"),
    ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: ca}\n",
     "tls_server_config.client_ca_file: is set but client_auth_type does not ask"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: VerifyClientCertIfGiven, "
     "client_allowed_sans: [x]}\n", "tls_server_config.client_allowed_sans: needs client_auth_type"),
    ("tls_server_config: {cert: PEM, key_file: b}\n", "tls_server_config.cert: (an inline certificate) is not"),
    ("rate_limit: {burst: 1}\n", "rate_limit: is not supported by mglrud"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}\n",
     "http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin"),
    ("http_server_config: {http2: maybe}\n", "http_server_config.http2: must be true or false"),
    ("basic_auth_users: {u: $2y$03$" + "a" * 53 + "}\n", "basic_auth_users.u: is not a bcrypt hash"),
    ("basic_auth_users: [u]\n", "basic_auth_users: must be a mapping"),
    ("a: 1\na: 2\n", "is not valid YAML: line 2, column 1: duplicate key 'a'"),
])
def test_bad_files_name_the_key(text, line):
    with pytest.raises(ConfigError) as e:
        webconfig.parse(text, P)
    assert str(e.value).startswith(f"{P}: {line}"), str(e.value)
    assert "\n" not in str(e.value)


def _header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_bcrypt_cache_and_decoy(monkeypatch):
    users = {"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}
    auth = basicauth.BasicAuth()
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(h) or real(p, h))
    assert auth.check(users, _header("prometheus", "pw"))
    assert auth.check(users, _header("prometheus", "pw"))
    assert len(calls) == 1  # the second answer came from the cache
    assert not auth.check(users, _header("prometheus", "nope"))
    assert not auth.check(users, _header("stranger", "pw"))
    assert calls[-1] != users["prometheus"].encode() and calls[-1].startswith(b"$2b$04$")  # the decoy, same cost
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not auth.check(users, bad)
    assert auth.check(users, "basic " + _header("prometheus", "pw")[6:])  # the scheme is case-insensitive


@pytest.mark.parametrize("value,want", [
    ("127.0.0.1:9746", {"address": "127.0.0.1", "port": 9746}),
    ("[::1]:9100", {"address": "::1", "port": 9100}),
    (":9746", {"address": "0.0.0.0", "port": 9746}),
])
def test_web_listen_address(value, want):
    assert cli.parse_listen_address(value) == want


@pytest.mark.parametrize("argv,line", [
    (["--web.listen-address", "localhost:9746"], "--web.listen-address: must be an IP address"),
    (["--web.listen-address", "127.0.0.1"], "--web.listen-address: must be HOST:PORT"),
    (["--web.listen-address", "127.0.0.1:70000"], "--web.listen-address: must be HOST:PORT"),
    (["--web.listen-address", "127.0.0.1:1", "--listen.port", "2"], "--web.listen-address: give it or"),
])
def test_bad_web_listen_address_one_line_exit_2(argv, line, capsys):
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mglrud: config: {line}") and err.count("\n") == 1, err


def test_web_config_file_key_in_the_config_and_the_flag_overriding_it(tmp_path, capsys):
    from mglrud.config import loads

    assert loads("web_config_file: /etc/mglrud/web.yml\n").web_config_file == "/etc/mglrud/web.yml"
    assert loads("{}\n").web_config_file == ""
    with pytest.raises(ConfigError, match="^web_config_file: must be an absolute path"):
        loads("web_config_file: web.yml\n")
    bad = tmp_path / "bad-web.yml"
    bad.write_text("basic_auth_users: {u: plaintext}\n")
    good = tmp_path / "good-web.yml"
    good.write_text("basic_auth_users: {}\n")
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(f"web_config_file: {bad}\n")
    # the config's file is checked at start, one line naming it and the key
    assert cli.main(["check", "-c", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"mglrud: config: {bad}: basic_auth_users.u: is not a bcrypt hash (like "
                                       f"$2y$10$ and 53 characters; make one with `htpasswd -nBC 10 USER`)\n")
    # --web.config.file wins over the key
    args = cli._parser().parse_args(["run", "-c", str(cfg), "--web.config.file", str(good)])
    assert cli.load_config(args).web_config_file == str(good)
