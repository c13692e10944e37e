"""Config values: the one-line ConfigError, durations, sizes of text, memcg globs."""

from __future__ import annotations

import re
from typing import Any


from mglrud.config.schema import _MAX_KEY_CHARS, _MAX_MESSAGE_CHARS, MIN_DURATION


def escape(text: str) -> str:
    """`text` with every character that is not printable (control characters, NUL, newlines,
    ANSI escapes, bidi overrides) as a Python escape, so that a message stays one honest line."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif c in "\n\r\t":
            out.append(repr(c)[1:-1])
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ConfigError(Exception):
    """A configuration value is wrong; `key` is its dotted path.

    Both parts are escaped and shortened: str(e) is one printable line of bounded length
    whatever the file held (a key with a newline must not forge a second log line).
    """

    def __init__(self, key: str, message: str):
        key = _shorten(escape(str(key)), _MAX_KEY_CHARS)
        message = _shorten(escape(str(message)), _MAX_MESSAGE_CHARS)
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# ---------------------------------------------------------------- scalars

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(text: Any, key: str, minimum: float = MIN_DURATION) -> float:
    """'30s', '5m', '1h', '1m30s', '500ms' -> seconds (at least `minimum`)."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ConfigError(key, f"must be a duration with a unit like 30s, 5m or 1h, got {text!r}")
    if text.startswith("-"):
        raise ConfigError(key, f"must be longer than zero, got {text!r}")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ConfigError(key, f"must be a duration with a unit like 30s, 5m or 1h, got {text!r}")
    if total <= 0:
        raise ConfigError(key, f"must be longer than zero, got {text!r}")
    if total < minimum:  # 0.000001ms would age (and clear_refs) as fast as the loop can spin
        raise ConfigError(key, f"must be at least {format_duration(minimum)}, got {text!r}")
    if total > MAX_DURATION:  # beyond any sensible schedule, and past what timers accept
        raise ConfigError(key, f"must be at most {format_duration(MAX_DURATION)}, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for messages: 90 -> '1m30s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = "", seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            n = int(rest // size)
            out += f"{n}{unit}"
            rest -= n * size
    if rest or not out:
        out += f"{rest:g}s"
    return out


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, f"must be true or false, got {v!r}")
    return v


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(key, f"must be a non-empty string, got {v!r}")
    return v


def _text(v: Any, key: str) -> str:
    """A non-empty string of printable characters: no NUL (the kernel's strings end there),
    no newline (lru_gen and /proc are line formats), no escape or bidi control characters."""
    v = _str(v, key)
    if not v.isprintable():
        raise ConfigError(key, f"must not contain control or invisible characters, got {v!r}")
    return v


def _int(v: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(key, f"must be an integer from {lo} to {hi}, got {v!r}")
    return v


def _mapping(v: Any, key: str, known: tuple[str, ...]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(key, f"must be a mapping of {', '.join(known)}, got {type(v).__name__}")
    for k in v:
        if k not in known:
            raise ConfigError(_join(key, str(k)), f"unknown key; known keys here: {', '.join(known)}")
    return v


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _durations(v: Any, key: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(key, f"must be a non-empty list of durations like [30s, 1m], got {v!r}")
    if len(v) > 16:
        raise ConfigError(key, f"at most 16 entries (each one multiplies the series per memcg), got {len(v)}")
    out = [parse_duration(x, f"{key}[{i}]") for i, x in enumerate(v)]
    for i, x in enumerate(out):
        if x in out[:i]:
            raise ConfigError(f"{key}[{i}]", f"{v[i]} is listed twice")
    return tuple(sorted(out))


# ---------------------------------------------------------------- memcg globs

def memcg_glob(pattern: str) -> re.Pattern:
    """A cgroup path glob: * and ? stay inside one path component, ** spans any number.

    Match it with memcg_matches(): the root cgroup "/" is matched as "" so that
    "/**" covers the root and everything below it.
    """
    out = ""
    for part in (p for p in pattern.split("/") if p):
        if part == "**":
            out += "(?:/[^/]+)*"
        elif "**" in part:
            raise ValueError("** must be a whole path component, as in /system.slice/**")
        else:
            out += "/" + "".join(
                "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
    return re.compile(out)


def memcg_matches(pattern: re.Pattern, path: str) -> bool:
    return pattern.fullmatch("" if path == "/" else path) is not None
