"""omibuild's own steps after BuildKit's (the model layers, the load, the dry prediction, the
push), numbered and shown as the build view shows BuildKit's."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TextIO

from omibuild.engine.progress import report_step


@dataclass
class OwnSteps:
    """omibuild's own steps after BuildKit's, numbered and shown as the build view shows
    BuildKit's (engine/progress.py); each also goes to the build's log."""

    kind: str
    stream: TextIO
    total: int
    log_path: str | None
    done: int = 0

    def report(self, what: str, seconds: float | None, logs: tuple[str, ...] = ()) -> None:
        self.done += 1
        name = f"[model {self.done}/{self.total}] {what}"
        report_step(self.kind, self.stream, name, seconds, logs)
        self.log((name, *logs, "CACHED" if seconds is None else f"DONE {seconds:.1f}s"))

    def log(self, lines: tuple[str, ...]) -> None:
        if self.log_path:
            with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
                log.write("".join(f"#model {ln}\n" for ln in lines))
