"""BuildKit's structured progress (`buildx build --progress=rawjson`), read into steps, shown as
a person or a CI log wants it, and read again when a build fails to say why in one line.

buildx writes one JSON object per event (vertexes, statuses, logs), pretty-printed over several
lines, then plain text for its final error; `Events` tells them apart. `Steps` keeps each
vertex (a Dockerfile step, or BuildKit's own work: loading, exporting) with its times, cache
hit, error, bytes moved and the last lines of its log, and writes the whole log to a file as
buildx's plain mode would. The views: `TtyView` (a rich live view: one line per running step,
in words), `LineView` (one line per finished step, with its time) and `GithubView` (each step's
log folded in ::group:: blocks). `diagnose` finds the failed step and names the fault."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from omibuild.units import human

LOG_LINES = 400  # kept per step for diagnosis; the file has everything
DOCKERFILE_STEP = re.compile(r"^\[(?P<where>[^\]]+)\] (?P<what>.*)$", re.DOTALL)


_POSITION = re.compile(r"^\[(?P<stage>\S+) (?P<n>\d+)/\d+\] (?!LINK )")


def _position(name: str) -> str:
    """A Dockerfile step's stage and number ("deps 3"), none for BuildKit's own work and the
    merge a linked copy adds (LINK COPY ...)."""
    m = _POSITION.match(name)
    return f"{m['stage']} {m['n']}" if m else ""


def _seconds(stamp: str | None) -> float | None:
    if not stamp:
        return None
    # RFC 3339 with nanoseconds: trim to microseconds for fromisoformat
    main, _, frac = stamp.rstrip("Z").partition(".")
    iso = f"{main}.{(frac + '000000')[:6]}+00:00" if frac else f"{main}+00:00"
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


class Events:
    """Split buildx's output into JSON events and the plain lines between them."""

    def __init__(self) -> None:
        self.buffer: list[str] = []
        self.decoder = json.JSONDecoder()

    def feed(self, line: str) -> Iterator[dict[str, Any] | str]:
        if not self.buffer and not line.startswith("{"):
            yield line
            return
        self.buffer.append(line)
        if line.rstrip() != "}":
            return
        text = "\n".join(self.buffer)
        try:
            obj, _end = self.decoder.raw_decode(text)
        except ValueError:
            return  # a "}" inside the object: read on
        self.buffer = []
        yield obj


@dataclass
class Step:
    digest: str
    name: str
    number: int
    id: str | None = None  # the plan's id for a Dockerfile step (render/dockerfile.py step_ids)
    started: float | None = None
    completed: float | None = None
    cached: bool = False
    error: str | None = None
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    moved: dict[str, int] = field(default_factory=dict)  # status id → bytes so far

    @property
    def dockerfile_step(self) -> bool:
        """A step BuildKit can take from a cache (RUN, COPY...): not its own bookkeeping
        ([internal] load ..., the LINK merge of a linked copy), not a stage's FROM, which it
        only resolves."""
        m = DOCKERFILE_STEP.match(self.name)
        if not m or m["where"].startswith("internal"):
            return False
        return not m["what"].startswith(("FROM ", "LINK "))

    @property
    def shown(self) -> bool:
        """Worth a line of its own: not BuildKit's merge of a linked copy (LINK COPY ...),
        nor its quick bookkeeping ([internal] ...) unless it moved a megabyte or more."""
        m = DOCKERFILE_STEP.match(self.name)
        what = m["what"] if m else self.name
        if what.startswith("LINK "):
            return False
        return not self.name.startswith("[internal]") or self.bytes >= 1_000_000

    @property
    def stage(self) -> str:
        m = DOCKERFILE_STEP.match(self.name)
        return m["where"] if m else ""

    @property
    def bytes(self) -> int:
        return sum(self.moved.values())

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.completed or time.time()) - self.started)

    @property
    def failed(self) -> bool:
        return bool(self.error) and "context canceled" not in (self.error or "")


class Steps:
    """Every vertex of a build, in the order BuildKit announced them."""

    def __init__(self, log: TextIO | None = None, ids: tuple[tuple[str, str], ...] = ()) -> None:
        self.steps: dict[str, Step] = {}
        self.ids = dict(ids)  # "deps 3" → the plan's id of BuildKit's "[deps 3/6]"
        self.trailer: list[str] = []  # buildx's plain text after the events: its final error
        self.log = log

    def _write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text + "\n")

    def apply(self, event: dict[str, Any] | str) -> list[Step]:
        """Take one event; return the steps it finished (completed, cached or failed)."""
        if isinstance(event, str):
            self.trailer.append(event)
            self._write(event)
            return []
        finished = []
        for v in event.get("vertexes") or []:
            step = self.steps.get(v["digest"])
            if step is None:
                name = v.get("name", "")
                step = self.steps[v["digest"]] = Step(
                    v["digest"], name, len(self.steps) + 1, self.ids.get(_position(name))
                )
                self._write(f"#{step.number} {step.name}")
            was_done = step.completed is not None
            step.started = _seconds(v.get("started")) or step.started
            step.completed = _seconds(v.get("completed")) or step.completed
            step.cached = step.cached or bool(v.get("cached"))
            if v.get("error"):
                step.error = v["error"]
                self._write(f"#{step.number} ERROR: {step.error}")
            if step.completed is not None and not was_done:
                self._write(f"#{step.number} {'CACHED' if step.cached else 'DONE'}")
                finished.append(step)
        for s in event.get("statuses") or []:
            step = self.steps.get(s.get("vertex", ""))
            if step is not None and s.get("current"):
                step.moved[s.get("id", "")] = int(s["current"])
        for entry in event.get("logs") or []:
            step = self.steps.get(entry.get("vertex", ""))
            try:
                text = base64.b64decode(entry.get("data", "")).decode("utf-8", "replace")
            except ValueError:
                continue
            for line in text.splitlines():
                if step is not None:
                    step.logs.append(line)
                    self._write(f"#{step.number} {line}")
        return finished

    def dockerfile_steps(self) -> list[Step]:
        return [s for s in self.steps.values() if s.dockerfile_step]

    def tail(self) -> list[str]:
        """The last lines, as buildx's plain mode would have printed them (for the retries in
        engine/apply.py, which read the engine's own failures)."""
        out = []
        for s in self.steps.values():
            out.append(f"#{s.number} {s.name}")
            if s.error:
                out.append(f"#{s.number} ERROR: {s.error}")
        return (out + self.trailer)[-60:]


# what each of the plan's steps does, in words (the Dockerfile text is in the log)
_WORDS = {
    "base": "starting from the base image",
    "system-packages": "installing system packages",
    "venv": "creating the virtualenv",
    "requirements": "copying the requirements",
    "install": "installing the requirements",
    "slim-script": "copying the slimming script",
    "slim": "slimming the virtualenv",
    "record": "recording what the virtualenv holds",
    "runtime": "copying the runtime",
    "code": "copying the code",
    "code-directory": "creating the code directory",
    "compile": "byte-compiling the code",
    "user": "adding the non-root user",
    "copy-venv": "copying the virtualenv",
    "copy-runtime": "copying the runtime",
    "copy-code": "copying the code",
    "analysis": "copying the analysis files",
    "omi-json": "writing omi.json",
    "plan-state": "writing the plan's state",
}
_BUILDKIT = [
    ("exporting cache", "exporting the cache"),
    ("exporting to image", "exporting the image"),
    ("exporting to oci image format", "exporting the image"),
    ("exporting to docker image format", "exporting the image"),
    ("importing cache manifest", "importing the cache"),
    ("[internal] load build context", "sending the build context"),
    ("[internal] load build definition", "reading the Dockerfile"),
    ("[internal] load .dockerignore", "reading .dockerignore"),
    ("[auth]", "signing in to the registry"),
    ("resolving provenance", "recording provenance"),
]


def words(step: Step) -> str:
    """What a step does, in words a person reads: a Dockerfile step by its plan id, BuildKit's
    own work by its name, anything else (a Dockerfile not omibuild's) by its first words."""
    m = DOCKERFILE_STEP.match(step.name)
    what = m["what"] if m else step.name
    if step.id in _WORDS:
        found: str | None = _WORDS[step.id]
        if step.id == "base" and what.startswith("FROM "):
            found = "starting from " + what[5:].split("@")[0]
    elif step.name.startswith("[internal] load metadata for "):
        found = "resolving " + step.name.removeprefix("[internal] load metadata for ")
    elif what.startswith(("RUN ", "COPY ")):  # a step of a Dockerfile that is not the plan's
        found = "running a command" if what.startswith("RUN ") else "copying files"
    else:
        found = next((w for key, w in _BUILDKIT if step.name.startswith(key)), None)
    text = found or what[:60]
    return f"{text} ({human(step.bytes)})" if step.bytes >= 1_000_000 else text


def label(step: Step) -> str:
    """A step's stage and number (as the Dockerfile names them) and what it does."""
    if step.stage and not step.stage.startswith("internal"):
        return f"[{step.stage}] {words(step)}"
    return words(step)


class LineView:
    """Off a terminal: one line per finished step, with its time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def update(self, steps: Steps, finished: list[Step]) -> None:
        for step in finished:
            if step.failed or not step.shown:
                continue
            how = "cached" if step.cached else f"{step.seconds:.1f}s"
            print(f"  {label(step)}: {how}", file=self.stream, flush=True)

    def close(self, steps: Steps) -> None:
        pass


class GithubView(LineView):
    """Under GitHub Actions: each finished step's log folded in a ::group:: block."""

    def update(self, steps: Steps, finished: list[Step]) -> None:
        for step in finished:
            if not step.shown:
                continue
            how = "cached" if step.cached else f"{step.seconds:.1f}s"
            print(f"::group::{workflow_text(label(step))}: {how}", file=self.stream)
            for line in step.logs:
                print(line, file=self.stream)
            print("::endgroup::", file=self.stream, flush=True)


def view_kind(progress: str, stream: TextIO) -> str:
    """Which view a build's output gets: quiet, tty, github or line."""
    tty = stream.isatty() and not os.environ.get("CI")
    if progress == "quiet":
        return "quiet"
    if progress == "tty" or (progress == "auto" and tty):
        return "tty"
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "line"


def report_step(
    kind: str, stream: TextIO, name: str, seconds: float | None, logs: tuple[str, ...] = ()
) -> None:
    """A step omibuild runs itself after BuildKit's (the model layers, the load, the dry
    prediction, the push), shown as the view shows BuildKit's: ``seconds`` None is cached."""
    if kind == "quiet":
        return
    how = "cached" if seconds is None else f"{seconds:.1f}s"
    if kind == "github":
        print(f"::group::{workflow_text(name)}: {how}", file=stream)
        for line in logs:
            print(line, file=stream)
        print("::endgroup::", file=stream, flush=True)
    else:
        print(f"  {name}: {how}", file=stream, flush=True)


def workflow_text(text: str) -> str:
    """A workflow command's message: its own escapes, so build text cannot start a command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


_PIP = re.compile(
    r"^(?:(Collecting|Downloading|Building wheel for) (\S+)|(Installing collected packages))"
)
_PIP_WORDS = {
    "Collecting": "resolving",
    "Downloading": "downloading",
    "Building wheel for": "building",
    "Installing collected packages": "installing",
}


def pip_doing(step: Step) -> str:
    """What pip is at in a running pip step, from its last words: ": downloading torch-2.13.0
    ...whl", or nothing for any other step."""
    if step.id != "install":
        return ""
    for line in reversed(list(step.logs)[-20:]):  # a copy: the build's thread appends
        m = _PIP.match(line.strip())
        if m and m[2]:  # a package (a URL's last part, for older pips)
            return f": {_PIP_WORDS[m[1]]} {m[2].rsplit('/', 1)[-1]}"[:70]
        if m:
            return f": {_PIP_WORDS[m[3]]}"
    return ""


class TtyView:
    """On a terminal: a live view, one line per running step with its time, the count of
    steps done and bytes moved; a short record stays in the scrollback. Build text is passed
    as rich Text, never as markup."""

    def __init__(self, stream: TextIO, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.title = title
        self.start = time.time()
        self.steps: Steps | None = None
        # drawn afresh at every refresh, not only when BuildKit says something: a long step's
        # time ticks, and pip's current package shows, while the build is quiet
        self.live = Live(
            console=self.console,
            refresh_per_second=4,
            transient=True,
            get_renderable=self._render,
        )
        self.live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        steps = self.steps
        lines = [Text(f"building {self.title}", style="bold")]
        if steps is not None:
            every = list(steps.steps.values())  # the build's thread adds steps meanwhile
            dockerfile = [s for s in every if s.dockerfile_step]
            done = [s for s in dockerfile if s.completed is not None]
            cached = sum(1 for s in done if s.cached)
            moved = sum(s.bytes for s in every)
            summary = f"  {len(done)}/{len(dockerfile)} steps done, {cached} cached"
            if moved >= 1_000_000:
                summary += f", {human(moved)} moved"
            summary += f", {time.time() - self.start:.0f}s"
            lines.append(Text(summary, style="dim"))
            running = [s for s in every if s.started is not None and s.completed is None]
            for step in [s for s in running if s.shown][-8:]:
                doing = pip_doing(step)
                lines.append(Text(f"  {label(step)}{doing}  {step.seconds:.0f}s"))
        return Group(*lines)

    def update(self, steps: Steps, finished: list[Step]) -> None:
        self.steps = steps  # the next refresh draws it

    def close(self, steps: Steps) -> None:
        from rich.text import Text

        self.live.stop()
        dockerfile = steps.dockerfile_steps()
        cached = sum(1 for s in dockerfile if s.cached)
        failed = any(s.failed for s in steps.steps.values())
        # no time here: apply's own line gives the one total, model layers and load included
        verb = "failed at one of its" if failed else "BuildKit ran its"
        self.console.print(Text(f"{self.title}: {verb} {len(dockerfile)} steps ({cached} cached)"))


def new_log(directory: Path, name: str) -> Path:
    """A path for a build's full log; the oldest go beyond the last 50."""
    directory.mkdir(parents=True, exist_ok=True)
    logs = sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-49]:
        old.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    return directory / f"{safe}-{stamp}.log"
