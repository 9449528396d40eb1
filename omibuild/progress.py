"""Progress for downloads and hashing: rich bars on a terminal, quiet lines otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.fancy = enabled and self.stream.isatty() and not os.environ.get("CI")

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda n: None
            return
        if not self.fancy:
            done = [0]
            yield lambda n: done.__setitem__(0, done[0] + n)
            if done[0] >= 8 << 20:
                print(f"{label}: {done[0] / 1e6:.1f} MB", file=self.stream)
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        with RichProgress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar:
            task_id = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task_id, n)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream)


QUIET = Progress(enabled=False)
