"""Sizes as every verb prints them: decimal units (kB, MB, GB, TB), as `docker images` and
the registries do, one decimal place."""

from __future__ import annotations


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
