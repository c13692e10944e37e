"""The exporter-toolkit web configuration file (`--web.config.file`, `web_config_file:`): TLS, basic auth, headers.

The format is Prometheus exporter-toolkit's, read unchanged, so one file serves
node_exporter and mglrud: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md
(checked by `promtool check web-config`). Relative file names are relative to the
file's directory, as in the toolkit. What Python's ssl module cannot do is refused
with one line naming the key, never silently ignored:

- client_auth_type RequestClientCert / RequireAnyClientCert: OpenSSL through Python
  verifies every client certificate it asks for against a CA; there is no "ask but
  do not verify". NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert work.
- curve_preferences with more than one curve (SSLContext.set_ecdh_curve takes one);
  inline `cert`, `key` (load_cert_chain reads files); rate_limit.
- cipher_suites apply to TLS 1.0-1.2, as in Go; TLS 1.3 suite names are accepted and,
  as in Go, change nothing. http_server_config.http2 is accepted; mglrud speaks HTTP/1.x only.

Parsing (parse) is pure; load() reads the files it names and builds the SSLContext;
WebConfigSource re-reads the file when it or a file it names changes (checked per
connection, a few stat() calls), keeping the previous config when the new one is bad.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from mglrud import boundedyaml
from mglrud.config import ConfigError

log = logging.getLogger(__name__)

MAX_FILE = 1 << 20  # bytes: a web config is a few lines; /dev/zero must not eat the memory

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "cipher_suites", "curve_preferences",
            "min_version", "max_version", "prefer_server_cipher_suites", "client_allowed_sans",
            "cert", "key", "client_ca")
HTTP_KEYS = ("http2", "headers")
UNSUPPORTED = {
    "rate_limit": "is not supported by mglrud (it serves one scraper's requests; limit at a proxy)",
    "tls_server_config.cert": "(an inline certificate) is not supported by mglrud; use cert_file",
    "tls_server_config.key": "(an inline key) is not supported by mglrud; use key_file",
}
CLIENT_AUTH = {"": ssl.CERT_NONE, "NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
            "TLS13": ssl.TLSVersion.TLSv1_3}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# Go's crypto/tls names (tls.CipherSuites()) -> OpenSSL's. None: a TLS 1.3 suite, which
# neither Go nor OpenSSL's cipher list lets one configure.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA", "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None, "TLS_AES_256_GCM_SHA384": None, "TLS_CHACHA20_POLY1305_SHA256": None,
}
# The toolkit's extraHTTPHeaders: only these may be set, some only to these values.
HEADERS = {"Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
           "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None}
# golang.org/x/crypto/bcrypt's format: $2a$/$2b$/$2y$, a two-digit cost from 4 to 31, 53 chars of salt+hash.
_BCRYPT = re.compile(r"\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class TLS:
    cert_file: str
    key_file: str
    client_ca_file: str = ""
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_auth_type: str = "NoClientCert"
    ciphers: tuple[str, ...] = ()  # OpenSSL names
    curve: str = ""
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2  # the toolkit's defaults
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


@dataclass(frozen=True)
class WebConfig:
    path: str
    tls: TLS | None = None
    users: tuple[tuple[str, str], ...] = ()  # (user, bcrypt hash)
    headers: tuple[tuple[str, str], ...] = ()
    context: ssl.SSLContext | None = field(default=None, compare=False)

    @property
    def user_hashes(self) -> dict[str, str]:
        return dict(self.users)


def _err(path: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {key}" if key else path, message)


def _map(v: Any, path: str, key: str, known: tuple[str, ...]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _err(path, key, f"must be a mapping of {', '.join(known)}, got {type(v).__name__}")
    for k in v:
        full = f"{key}.{k}" if key else str(k)
        if k not in known:
            raise _err(path, full, f"unknown key; known keys here: {', '.join(known)}")
        if full in UNSUPPORTED:
            raise _err(path, full, UNSUPPORTED[full])
    return v


def _string(v: Any, path: str, key: str) -> str:
    if not isinstance(v, str):
        raise _err(path, key, f"must be a string, got {v!r}")
    if any(c in v for c in "\0\r\n"):
        raise _err(path, key, "must not contain NUL or line breaks")
    return v


def _strings(v: Any, path: str, key: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise _err(path, key, f"must be a list of strings, got {v!r}")
    return tuple(_string(x, path, f"{key}[{i}]") for i, x in enumerate(v))


def _file(v: Any, path: str, key: str) -> str:
    name = _string(v, path, key)
    return os.path.join(os.path.dirname(os.path.abspath(path)), name) if name else ""


def _tls(v: Any, path: str) -> TLS | None:
    v = _map(v, path, "tls_server_config", TLS_KEYS)
    if not any(v.get(k) for k in ("cert_file", "key_file", "client_ca_file", "client_auth_type", "client_ca")):
        return None  # the toolkit's errNoTLSConfig: plain HTTP
    k = "tls_server_config."
    cert, key = _file(v.get("cert_file", ""), path, k + "cert_file"), _file(v.get("key_file", ""), path, k + "key_file")
    if not cert:
        raise _err(path, k + "cert_file", "is missing: TLS needs cert_file and key_file")
    if not key:
        raise _err(path, k + "key_file", "is missing: TLS needs cert_file and key_file")
    auth_type = _string(v.get("client_auth_type", ""), path, k + "client_auth_type")
    if auth_type in CLIENT_AUTH_UNSUPPORTED:
        raise _err(path, k + "client_auth_type", f"{auth_type} is not supported by mglrud: Python's ssl verifies "
                   "every client certificate it requests; use VerifyClientCertIfGiven or RequireAndVerifyClientCert "
                   "with client_ca_file")
    if auth_type not in CLIENT_AUTH:
        raise _err(path, k + "client_auth_type", f"must be one of NoClientCert, VerifyClientCertIfGiven, "
                   f"RequireAndVerifyClientCert, got {auth_type!r}")
    ca = _file(v.get("client_ca_file", ""), path, k + "client_ca_file")
    if v.get("client_ca"):
        raise _err(path, k + "client_ca", "(inline client CAs) is not supported by mglrud; use client_ca_file")
    mode = CLIENT_AUTH[auth_type]
    if ca and mode == ssl.CERT_NONE:
        raise _err(path, k + "client_ca_file", "is set but client_auth_type does not ask for client certificates "
                   "(set client_auth_type: RequireAndVerifyClientCert or VerifyClientCertIfGiven)")
    sans = _strings(v.get("client_allowed_sans"), path, k + "client_allowed_sans")
    if sans and mode != ssl.CERT_REQUIRED:
        raise _err(path, k + "client_allowed_sans", "needs client_auth_type: RequireAndVerifyClientCert")
    ciphers = []
    for i, name in enumerate(_strings(v.get("cipher_suites"), path, k + "cipher_suites")):
        if name not in CIPHERS:
            raise _err(path, f"{k}cipher_suites[{i}]", f"unknown cipher: {name} (Go's crypto/tls names, "
                       f"like TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        if CIPHERS[name]:
            ciphers.append(CIPHERS[name])
    curves = _strings(v.get("curve_preferences"), path, k + "curve_preferences")
    for i, name in enumerate(curves):
        if name not in CURVES:
            raise _err(path, f"{k}curve_preferences[{i}]", f"unknown curve: {name} (one of {', '.join(CURVES)})")
    if len(curves) > 1:
        raise _err(path, k + "curve_preferences", "mglrud can set one curve (Python's ssl), got "
                   f"{len(curves)}: list one, or leave the key out for OpenSSL's defaults")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        val = v.get(name, default)
        if val not in VERSIONS:
            raise _err(path, k + name, f"must be one of {', '.join(VERSIONS)}, got {val!r}")
        versions[name] = VERSIONS[val]
    if versions["min_version"] > versions["max_version"]:
        raise _err(path, k + "min_version", "is above max_version")
    prefer = v.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _err(path, k + "prefer_server_cipher_suites", f"must be true or false, got {prefer!r}")
    return TLS(cert_file=cert, key_file=key, client_ca_file=ca, client_auth=mode,
               client_auth_type=auth_type or "NoClientCert", ciphers=tuple(ciphers),
               curve=CURVES[curves[0]] if curves else "", min_version=versions["min_version"],
               max_version=versions["max_version"], prefer_server_cipher_suites=prefer,
               client_allowed_sans=sans)


def _users(v: Any, path: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise _err(path, "basic_auth_users", f"must be a mapping of user name to bcrypt hash, got {type(v).__name__}")
    out = []
    for user, hashed in v.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or ":" in user:
            raise _err(path, "basic_auth_users", f"user names must be strings without ':', got {user!r}")
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed) or not 4 <= int(hashed[-56:-54]) <= 31:
            raise _err(path, key, "is not a bcrypt hash (like $2y$10$ and 53 characters; make one with "
                                  "`htpasswd -nBC 10 USER`)")
        out.append((user, hashed))
    return tuple(out)


def _headers(v: Any, path: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise _err(path, "http_server_config.headers", f"must be a mapping of header to value, got {v!r}")
    out = []
    for name, value in v.items():
        key = f"http_server_config.headers.{name}"
        if name not in HEADERS:
            raise _err(path, key, f"can not be configured (only {', '.join(HEADERS)})")
        value = _string(value, path, key)
        if HEADERS[name] and value not in HEADERS[name]:
            raise _err(path, key, f"must be one of {', '.join(HEADERS[name])}, got {value!r}")
        out.append((name, value))
    return tuple(out)


def parse(text: str, path: str) -> WebConfig:
    """The file's text -> WebConfig without its SSLContext (pure: no file is opened)."""
    try:
        doc = boundedyaml.parse(text)
    except boundedyaml.TooBig as e:
        raise _err(path, "", str(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _err(path, "", f"is not valid YAML: {where}{e.problem}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise _err(path, "", f"is not valid YAML: {type(e).__name__}") from None
    if doc is None:
        doc = {}
    doc = _map(doc, path, "", TOP_KEYS)
    http = _map(doc.get("http_server_config"), path, "http_server_config", HTTP_KEYS)
    if not isinstance(http.get("http2", True), bool):
        raise _err(path, "http_server_config.http2", f"must be true or false, got {http['http2']!r}")
    return WebConfig(path=path, tls=_tls(doc.get("tls_server_config"), path),
                     users=_users(doc.get("basic_auth_users"), path), headers=_headers(http.get("headers"), path))


def _read(path: str, key: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise _err(where, key, f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_FILE:
        raise _err(where, key, f"{path} is larger than {MAX_FILE} bytes")
    return data


def context(tls: TLS, where: str) -> ssl.SSLContext:
    """The server SSLContext for these settings; every failure names the key."""
    k = "tls_server_config."
    cert_pem = _read(tls.cert_file, k + "cert_file", where)
    _read(tls.key_file, k + "key_file", where)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # is the cert a certificate at all? (load_cert_chain's errors do not say which file)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise _err(where, k + "cert_file", f"{tls.cert_file} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as e:
        what = "does not match the certificate in cert_file" if "MISMATCH" in str(e) else "holds no usable PEM private key"
        raise _err(where, k + "key_file", f"{tls.key_file} {what}") from None
    except OSError as e:
        raise _err(where, k + "cert_file", f"cannot load: {e.strerror}") from None
    ctx.minimum_version, ctx.maximum_version = tls.min_version, tls.max_version
    if tls.ciphers:
        try:
            ctx.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            raise _err(where, k + "cipher_suites", "none of these suites is available in this OpenSSL") from None
    if tls.curve:
        ctx.set_ecdh_curve(tls.curve)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.verify_mode = tls.client_auth
    if tls.client_auth != ssl.CERT_NONE:
        if tls.client_ca_file:
            ca = _read(tls.client_ca_file, k + "client_ca_file", where)
            try:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError):
                raise _err(where, k + "client_ca_file", f"{tls.client_ca_file} holds no PEM certificate") from None
        else:  # as Go does with ClientCAs unset: the system's roots
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return ctx


def load(path: str) -> WebConfig:
    """Read, parse and check a web config file, certificates and keys included; raises ConfigError."""
    raw = _read(path, "", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err(path, "", f"is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None
    cfg = parse(text, path)
    if cfg.tls is None:
        return cfg
    return WebConfig(path=cfg.path, tls=cfg.tls, users=cfg.users, headers=cfg.headers, context=context(cfg.tls, path))


def _stat(path: str):
    try:
        st = os.stat(path)
    except OSError as e:
        return e.errno
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class WebConfigSource:
    """The web config in force, re-read when its file or a file it names changes.

    Like exporter-toolkit (which reads the file per request): no restart or SIGHUP
    needed. A file that became bad is logged once and the previous config stays;
    turning TLS on or off needs a restart (the listener's scheme is fixed).
    """

    def __init__(self, path: str, initial: WebConfig):
        self.path = path
        self._current = initial
        self._lock = threading.Lock()
        self._signature = self._sign(initial)
        self._bad = None  # the signature last logged as bad

    def _sign(self, cfg: WebConfig) -> tuple:
        return tuple(_stat(p) for p in (self.path,) + (cfg.tls.files if cfg.tls else ()))

    @property
    def current(self) -> WebConfig:
        with self._lock:
            sig = self._sign(self._current)
            if sig == self._signature:
                return self._current
            try:
                new = load(self.path)
                if (new.tls is None) != (self._current.tls is None):
                    raise ConfigError(f"{self.path}: tls_server_config", "turning TLS on or off needs a restart "
                                                                         "of mglrud")
            except ConfigError as e:
                if sig != self._bad:
                    log.error("web config: %s; keeping the previous one", e)
                    self._bad = sig
                return self._current
            self._current, self._signature, self._bad = new, self._sign(new), None
            log.info("web config %s re-read", self.path)
            return new
