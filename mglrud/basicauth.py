"""HTTP basic authentication (RFC 7617) against exporter-toolkit's `basic_auth_users` bcrypt hashes.

Checked as exporter-toolkit's web/handler.go does it, so the same file behaves the same
in node_exporter and mglrud; bcrypt is Debian's python3-bcrypt (pyca/bcrypt).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict


class BasicAuth:
    """basic_auth_users checking as exporter-toolkit does it: bcrypt one at a time (it is CPU-bound
    on purpose), results cached by a hash of (user, hash, password), unknown users compared
    against a decoy hash of the highest configured cost so timing does not tell who exists."""

    CACHE = 100

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bool] = OrderedDict()
        self._decoys: dict[int, bytes] = {}

    def check(self, users: dict[str, str], authorization: str | None) -> bool:
        import bcrypt  # Debian's python3-bcrypt; only a web config with users needs it

        creds = _basic(authorization)
        if creds is None:
            return False
        user, password = creds
        hashed = users.get(user)
        known = hashed is not None
        with self._lock:
            if not known:
                cost = max(int(h[-56:-54]) for h in users.values())
                if cost not in self._decoys:
                    self._decoys[cost] = bcrypt.hashpw(b"fakepassword", bcrypt.gensalt(cost))
                hashed_b = self._decoys[cost]
            else:
                hashed_b = hashed.encode()
            key = hashlib.sha256(b"\0".join((user.encode(), hashed_b, password))).hexdigest()
            ok = self._cache.get(key)
            if ok is None:
                ok = bcrypt.checkpw(password, hashed_b)
                self._cache[key] = ok
                while len(self._cache) > self.CACHE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return known and ok


def _basic(header: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password), as Go's Request.BasicAuth parses it."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password
