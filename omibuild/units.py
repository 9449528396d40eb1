"""Sizes as every verb prints them: decimal units (kB, MB, GB, TB), as `docker images` and
the registries do, one decimal place."""

from __future__ import annotations

import re


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """ "20GB", "500MiB", "0" → bytes; ValueError naming the forms it takes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: use e.g. 20GB, 500MiB or 0")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = unit[:1]
    factor = _UNITS[base] if "i" not in unit else 1024 ** "bkmgt".index(base or "b")
    return int(number * factor)
