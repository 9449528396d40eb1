"""Dockerfile and shell quoting. User strings never reach a shell or split a line."""

from __future__ import annotations

import json
import re
import shlex

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeValue(ValueError):
    pass


def _check(value: str) -> str:
    if _CONTROL.search(value):
        raise UnsafeValue(f"control character in {value!r}: it would split a Dockerfile line")
    return value


def dq(value: str) -> str:
    """A Dockerfile double-quoted word (ENV, LABEL): escape \\, " and $ (no expansion)."""
    _check(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def sh(value: str) -> str:
    """A shell word for RUN lines; $ in the Dockerfile is escaped as well."""
    return shlex.quote(_check(value)).replace("$", "\\$")


def json_args(args: list[str]) -> str:
    """Exec form (ENTRYPOINT/CMD/COPY with spaces): a JSON array is never shell-parsed."""
    for a in args:
        _check(a)
    return json.dumps(args)
