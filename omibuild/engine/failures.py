"""Why a build failed, in one line with its kind, and which failures are the engine's own
and worth one more try: BuildKit's failed step read by its name and logs (engine/progress.py
keeps them), and the engine's lost records retried."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from omibuild.engine.progress import Step, Steps, words
from omibuild.engine.request import BuildRequest, BuildResult, Executor
from omibuild.progress import Progress


@dataclass(frozen=True)
class Failure:
    """A build's failure: its kind (apply's JSON carries it), the line, and what to do."""

    kind: str
    line: str
    hint: str | None = None

    def __str__(self) -> str:
        return self.line + (f" (hint: {self.hint})" if self.hint else "")


REGISTRY_HINT = "start the registry, check image.repository, or apply without --push"
LOGIN_HINT = "`docker login` to the registry, with push rights on the repository"
_HOST = re.compile(r"(?:https?://)?([a-z0-9.-]+(?::\d+)?)/v2/", re.IGNORECASE)


@dataclass(frozen=True)
class _Failed:
    """The step that failed, as the rules read it."""

    step: Step | None
    error: str
    logs: list[str]

    @property
    def name(self) -> str:
        return self.step.name if self.step else ""

    @property
    def text(self) -> str:
        return f"{self.error}\n" + "\n".join(self.logs)


def _failed_step(steps: Steps) -> _Failed:
    trailer = next((ln for ln in reversed(steps.trailer) if ln.startswith("ERROR:")), "")
    failing = [s for s in steps.steps.values() if s.failed]
    # buildx's last line names the error that failed the build, and a step beside it can fail
    # too; so the step with that error is chosen (a full CI run said "not found" for a build
    # whose pip step fails every time; its log was not kept, so that is the likely cause)
    failed = next(
        (s for s in failing if s.error and s.error in trailer), failing[0] if failing else None
    )
    error = (failed.error if failed else None) or trailer.removeprefix("ERROR: ") or "build failed"
    return _Failed(failed, error, list(failed.logs) if failed else [])


def _disk(f: _Failed) -> Failure | None:
    if "no space left on device" not in f.text:
        return None
    return Failure(
        "disk",
        "the disk is full",
        "free space: `omibuild cache prune --keep 0`, "
        "`docker builder prune`, or a larger disk for the engine's data root",
    )


def _example(f: _Failed) -> Failure | None:
    # the build's own step (the example's dry prediction) said what is wrong
    ours = next((ln for ln in f.logs if ln.startswith("omibuild: ")), None)
    return Failure("example", ours.removeprefix("omibuild: ")) if ours else None


def _memory(f: _Failed) -> Failure | None:
    if "exit code: 137" not in f.error and "signal: killed" not in f.error:
        return None
    return Failure(
        "memory",
        f"{words(f.step) if f.step else 'a step'} ran out of memory (killed, exit 137)",
        "give the Docker engine more memory, or build fewer models at once",
    )


def _requirements(f: _Failed) -> Failure | None:
    if "pip install" not in f.name:
        return None
    pip = [ln for ln in f.logs if ln.startswith("ERROR: ")]
    chosen = next((ln for ln in pip if "No matching distribution" in ln), pip[0] if pip else "")
    if not chosen:
        return None
    return Failure(
        "requirements",
        f"pip could not install the requirements: {chosen.removeprefix('ERROR: ')}",
        "check image.requirements in omi.yaml: each pin must exist on the index",
    )


def _base(f: _Failed) -> Failure | None:
    if not f.name.startswith("[internal] load metadata for "):
        return None
    image = f.name.removeprefix("[internal] load metadata for ")
    return Failure(
        "base",
        f"the base image {image} cannot be pulled: {_short(f.error)}",
        "check image.base in omi.yaml (or OMIBUILD_BASE_IMAGE), the network, or docker login",
    )


def _missing_file(f: _Failed) -> Failure | None:
    missing = re.search(r'"/?([^"]+)": not found', f.error)
    if not missing or not f.name.split("] ", 1)[-1].startswith("COPY"):
        return None
    return Failure(
        "missing file",
        f"{missing.group(1)} is missing from the build context",
        "the file must exist where omi.yaml says (code.path, model.source)",
    )


def _registry(f: _Failed) -> Failure | None:
    unreachable = re.search(r"connection refused|no such host|i/o timeout", f.error) or re.search(
        r"dial tcp", f.error
    )
    host = _HOST.search(f.error)
    if not unreachable or not ("push" in f.error or "exporting" in f.name or host):
        return None
    where = f"the registry {host.group(1)}" if host else "the registry"
    return Failure("registry", f"{where} is unreachable ({unreachable.group(0)})", REGISTRY_HINT)


def _auth(f: _Failed) -> Failure | None:
    if not re.search(r"401 Unauthorized|403 Forbidden|denied|unauthorized", f.error, re.I):
        return None
    return Failure("auth", f"the registry refused the push: {_short(f.error)}", LOGIN_HINT)


# first match wins: a full disk explains anything after it, the example's own line explains
# the dry prediction's exit, and so on down to the registry's answers
_RULES: tuple[Callable[[_Failed], Failure | None], ...] = (
    _disk,
    _example,
    _memory,
    _requirements,
    _base,
    _missing_file,
    _registry,
    _auth,
)


def diagnose(steps: Steps) -> Failure:
    """The one line that says why a build failed, from the step that failed."""
    failed = _failed_step(steps)
    for rule in _RULES:
        if found := rule(failed):
            return found
    return Failure("build", _short(failed.error))


def _short(text: str) -> str:
    last = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["build failed"]
    return last[0][:300]


# The engine's own records, not a file the Dockerfile names ("failed to compute cache key: ...
# not found" is the build's own error and is not retried).
_NOT_FOUND = re.compile(
    r"failed to solve: (?:(?:lease|content digest|snapshot) [^\n]*: )?not found\s*$"
    # a cache record whose input the engine no longer has: seen when builds of the same
    # dependencies share records while other builds and image removals run beside them
    r"|failed to get state for index \d+ on "
    # BuildKit's solver dropping an edge that another build merged with and still needs
    # (moby/buildkit#2303): seen once in a full parallel test run; the same build again is cached
    r"|failed to get edge: inconsistent graph state",
    re.MULTILINE,
)

# containerd's garbage collector removing a snapshot that an unpack is about to build on, while
# another image is removed beside it (containerd/containerd#3787, #10835; seen twice in one full
# parallel test run). The blobs are still held, so the same load again unpacks them afresh.
LOST_SNAPSHOT = re.compile(r"parent snapshot \S+ does not exist: not found")


def retry_transient_failures(
    executor: Executor,
    requests: list[BuildRequest],
    results: list[BuildResult],
    progress: Progress,
) -> list[BuildResult]:
    """Build again, once, what failed for a reason that is the engine's and not the build's.

    - The image was made but exporting the cache failed: build again (all from the engine's
      cache) without the export. The cache is an optimisation, never a reason to fail;
      BuildKit 0.13 sometimes fails the export with "not found" despite ignore-error.
    - "failed to solve: not found" anywhere else: BuildKit with the containerd image store
      sometimes loses a content or lease record while another build or an image removal runs
      beside it (moby/buildkit, containerd/nerdctl#4142); or "inconsistent graph state", its
      solver's own race between concurrent builds (moby/buildkit#2303). The same build again
      is all cached.
    Any other failure is the build's own and is reported as it is."""
    out = list(results)
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if result.ok:
            continue
        tail = "\n".join([*result.log_tail, result.error or ""])
        if result.log_path is not None:  # structured progress: the step that failed says it
            cache_failed = (result.failed_step or "").startswith("exporting cache")
        else:
            cache_failed = bool(re.search(r"exporting cache|cache manifest", tail))
        if request.cache_to and cache_failed:
            progress.line(
                f"{request.tags[0]}: exporting the build cache failed "
                f"({result.error or 'error'}); building again without exporting it"
            )
            out[i] = executor.build(replace(request, cache_to=()))
        elif _NOT_FOUND.search(tail):
            progress.line(
                f"{request.tags[0]}: the engine lost a record during the build "
                f"({result.error or 'not found'}); building it again"
            )
            out[i] = executor.build(request)
    return out
