"""A validation problem is data: where, what, and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Issue:
    file: str
    line: int
    col: int
    path: str  # JSON path, e.g. $.model.source.mlflow.uri
    message: str
    hint: str | None = None
    severity: str = "error"  # a warning is shown but does not make the manifest invalid

    def text(self) -> str:
        tail = f" (hint: {self.hint})" if self.hint else ""
        level = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {level}{self.message}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def json_path(parts: tuple[str | int, ...]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum():
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out
