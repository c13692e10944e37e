"""Plain-text helpers every table of the CLI shares: byte sizes and aligned columns."""

from __future__ import annotations


def size(n: int | float | None) -> str:
    """Bytes as `512B`, `1.5KiB` ... `3.0GiB`; None (not known) as `-`."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells left-aligned in columns two spaces apart, trailing blanks trimmed."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
