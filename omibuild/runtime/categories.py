"""One spelling per category, shared by the build (drift's reference counts) and the served
image (a window's counts): a CSV cell "1", a JSON 1 and a request's 1.0 are the same category."""

from __future__ import annotations

import math
from typing import Any


def category_key(value: Any) -> str | None:
    """The category a value names; None for a missing one. Whole numbers are spelled as
    integers, other numbers as Python floats, anything else as its text."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return str(value)
    if math.isnan(number):
        return None
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    return repr(number)
