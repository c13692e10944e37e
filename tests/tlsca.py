"""A throwaway certificate authority made with openssl(1) for TLS tests: a CA, a server
certificate for 127.0.0.1 and a client certificate, all signed by it, plus one that is not.

    ca = CA.make(tmp_path)   # ca.crt, server.crt/.key, client.crt/.key, other.key in tmp_path
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class CA:
    dir: Path

    def __getattr__(self, name: str) -> Path:  # ca.server_crt -> DIR/server.crt
        stem, _, ext = name.rpartition("_")
        if ext in ("crt", "key"):
            return self.dir / f"{stem}.{ext}"
        raise AttributeError(name)

    @classmethod
    def make(cls, where: Path) -> CA:
        where.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=mglrud test CA",
             cwd=where)
        for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                          ("client", "subjectAltName=DNS:prometheus.test\nextendedKeyUsage=clientAuth")):
            _run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=where)
            (where / f"{name}.ext").write_text(ext + "\n")
            _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=where)
        _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key", cwd=where)
        return cls(where)
