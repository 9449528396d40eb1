"""The buildx executor: the only module that talks to the Docker engine (python-on-whales).

Builds run ``docker buildx build`` with plain progress, streamed: on a terminal a live view
of the BuildKit steps, in CI plain lines, and on failure the failing step, its log tail and
the Dockerfile excerpt BuildKit points at."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omibuild.engine.failures import diagnose
from omibuild.engine.images import EngineImages
from omibuild.engine.progress import (
    Events,
    GithubView,
    LineView,
    Steps,
    TtyView,
    new_log,
    view_kind,
)
from omibuild.engine.request import BuildRequest, BuildResult, BuildSecret

if TYPE_CHECKING:
    pass

_STEP = re.compile(r"^#(\d+) \[(.+?)\] (.*)$")
_CACHED = re.compile(r"^#(\d+) CACHED$")
# A blob a step's result is fetched as, from a registry cache: the step did not run (BuildKit
# prints no CACHED line for a lazily cached step whose layers an OCI export then needs).
_FETCHED = re.compile(r"^#(\d+) sha256:[0-9a-f]{64} [^\n]* done$")
_STEP_DONE = re.compile(r"^#(\d+) DONE ")


def _cacheable(where: str, what: str) -> bool:
    """A Dockerfile step BuildKit can take from a cache (a RUN, COPY, ...): not its own
    bookkeeping (``[internal] load ...``) and not a stage's FROM, which it only resolves."""
    return not where.startswith("internal") and not what.startswith("FROM ")


def _csv_field(text: str) -> str:
    """One field of buildx's CSV-style --output value."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"') else text


def _output(req: BuildRequest) -> str:
    if req.output.startswith("oci:"):
        return f"type=oci,dest={_csv_field(req.output[4:])}"
    if req.output.startswith("layout:"):  # a directory omibuild assembles the image in
        names = _csv_field("name=" + ",".join(req.tags))
        extra = ",force-compression=true" if req.compression != "uncompressed" else ""
        return (
            f"type=oci,dest={_csv_field(req.output[7:])},tar=false,{names},"
            f"compression={req.compression}{extra}"
        )
    push = "true" if req.output == "push" else "false"
    names = _csv_field("name=" + ",".join(req.tags))
    # Pushed images get gzip on every layer: BuildKit would otherwise reuse blobs cached in
    # another compression (local loads are uncompressed) and push those as they are.
    extra = ",force-compression=true" if req.output == "push" else ""
    return f"type=image,{names},push={push},compression={req.compression}{extra}"


def _annotations(req: BuildRequest) -> list[tuple[str, str, str]]:
    """Each annotation on the manifest, and on the index when there is one: BuildKit's OCI
    exporter refuses index annotations for a single platform."""
    kinds = ("manifest", "index") if len(req.platforms) > 1 else ("manifest",)
    return [(kind, k, v) for k, v in req.annotations for kind in kinds]


class BuildxExecutor(EngineImages):
    """Builds through ``docker buildx`` on the engine whose image store it queries
    (engine/images.py): one build, or several as one bake."""

    def command(self, req: BuildRequest, metadata: Path) -> list[str]:
        cmd = [
            *self._docker_cmd(),
            "buildx",
            "build",
            str(req.context),
            "-f",
            str(req.dockerfile),
            "--progress=plain",
            "--metadata-file",
            str(metadata),
        ]
        if req.builder:
            cmd += ["--builder", req.builder]
        if req.platforms:
            cmd += ["--platform", ",".join(req.platforms)]
        if req.no_cache:
            cmd.append("--no-cache")
        else:
            cmd += [a for c in req.cache_from for a in ("--cache-from", c.importing())]
            cmd += [a for c in req.cache_to for a in ("--cache-to", c.exporting())]
        for secret in req.secrets:
            cmd += ["--secret", secret.spec]
        if req.host_network:  # the entitlement RUN --network=host needs
            cmd += ["--allow", "network.host"]
        for kind, key, value in _annotations(req):
            cmd += ["--annotation", f"{kind}:{key}={value}"]
        if req.source_date_epoch is not None:
            cmd += ["--build-arg", f"SOURCE_DATE_EPOCH={req.source_date_epoch}"]
        cmd += ["--output", _output(req)]
        return cmd

    def bake_file(self, requests: list[BuildRequest]) -> dict[str, Any]:
        targets: dict[str, Any] = {}
        for i, req in enumerate(requests):
            target: dict[str, Any] = {
                "context": str(req.context),
                "dockerfile": str(req.dockerfile),
                "output": [_output(req)],
                "secret": [secret.spec for secret in req.secrets],
                "annotations": [f"{kind}:{k}={v}" for kind, k, v in _annotations(req)],
            }
            if req.platforms:
                target["platforms"] = list(req.platforms)
            if req.no_cache:
                target["no-cache"] = True
            else:
                target["cache-from"] = [c.importing() for c in req.cache_from]
                target["cache-to"] = [c.exporting() for c in req.cache_to]
            if req.source_date_epoch is not None:
                target["args"] = {"SOURCE_DATE_EPOCH": str(req.source_date_epoch)}
            if req.host_network:
                target["entitlements"] = ["network.host"]
            targets[f"model{i}"] = target
        return {"group": {"default": {"targets": sorted(targets)}}, "target": targets}

    def bake(self, requests: list[BuildRequest]) -> list[BuildResult]:
        with tempfile.TemporaryDirectory(prefix="omibuild-bake-") as tmp:
            bake = Path(tmp) / "bake.json"
            metadata = Path(tmp) / "metadata.json"
            bake.write_text(json.dumps(self.bake_file(requests), indent=2))
            cmd = [
                *self._docker_cmd(),
                "buildx",
                "bake",
                "-f",
                str(bake),
                "--progress=plain",
                "--metadata-file",
                str(metadata),
            ]
            builder = next((r.builder for r in requests if r.builder), None)
            if builder:
                cmd += ["--builder", builder]
            overall = self._run(cmd, requests[0], [s for r in requests for s in r.secrets])
            meta: dict[str, Any] = json.loads(metadata.read_text()) if metadata.exists() else {}
        results = []
        for i, _req in enumerate(requests):
            entry = meta.get(f"model{i}") or {}
            digest = entry.get("containerimage.digest")
            ok = overall.ok or digest is not None
            results.append(
                BuildResult(
                    ok=ok,
                    digest=digest,
                    log_tail=overall.log_tail,
                    error=None if ok else overall.error,
                    failure_kind=None if ok else overall.failure_kind,
                    cached_steps=overall.cached_steps,
                    total_steps=overall.total_steps,
                )
            )
        return results

    def build(self, req: BuildRequest) -> BuildResult:
        with tempfile.TemporaryDirectory(prefix="omibuild-meta-") as tmp:
            metadata = Path(tmp) / "metadata.json"
            result = self._run(self.command(req, metadata), req, list(req.secrets))
            if result.ok and metadata.exists():
                meta: dict[str, Any] = json.loads(metadata.read_text())
                result.digest = meta.get("containerimage.digest")
        return result

    def _run(self, cmd: list[str], req: BuildRequest, secrets: list[BuildSecret]) -> BuildResult:
        if req.progress != "plain":
            return self._run_structured(cmd, req, secrets)
        tail: deque[str] = deque(maxlen=60)
        steps: set[str] = set()
        cached: set[str] = set()
        fetched: set[str] = set()
        said: set[str] = set()  # steps with output of their own: they ran
        env = dict(os.environ) | {s.env_name: s.value for s in secrets if s.value is not None}
        proc = _start(cmd, env)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                if m := _STEP.match(line):
                    if _cacheable(m.group(2), m.group(3)):
                        steps.add(m.group(1))
                elif m := _CACHED.match(line):
                    cached.add(m.group(1))
                elif m := _FETCHED.match(line):
                    fetched.add(m.group(1))
                elif (m := re.match(r"^#(\d+) ", line)) and not _STEP_DONE.match(line):
                    said.add(m.group(1))
                print(line, file=self.stream)  # --progress plain: BuildKit's own log
            code = proc.wait()
        except BaseException:
            _cancel(proc)
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        lines = list(tail)
        error = next((ln for ln in reversed(lines) if ln.startswith("ERROR:")), None)
        return BuildResult(
            ok=code == 0,
            log_tail=lines,
            error=error,
            failure_kind=None if code == 0 else "build",
            cached_steps=len((cached | (fetched - said)) & steps),
            total_steps=len(steps),
        )

    def _view(self, req: BuildRequest) -> Any:
        kind = view_kind(req.progress, self.stream)
        if kind == "quiet":
            return None
        if kind == "tty":
            return TtyView(self.stream, req.tags[0].split(":")[0] if req.tags else "the image")
        return GithubView(self.stream) if kind == "github" else LineView(self.stream)

    def _run_structured(
        self, cmd: list[str], req: BuildRequest, secrets: list[BuildSecret]
    ) -> BuildResult:
        """buildx with --progress=rawjson: our view while it runs, and on failure one line
        that names the fault (engine/progress.py), with the full log kept in a file."""
        cmd = ["--progress=rawjson" if c == "--progress=plain" else c for c in cmd]
        name = req.tags[0].rsplit("/", 1)[-1].split(":")[0] if req.tags else "build"
        log_path = new_log(self.log_dir, name)
        env = dict(os.environ) | {s.env_name: s.value for s in secrets if s.value is not None}
        events = Events()
        view = self._view(req)
        with open(log_path, "w", encoding="utf-8") as log:
            steps = Steps(log, req.step_ids)
            proc = _start(cmd, env)
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    for event in events.feed(raw.rstrip("\n")):
                        finished = steps.apply(event)
                        if view is not None:
                            view.update(steps, finished)
                code = proc.wait()
            except BaseException:
                _cancel(proc)
                raise
            finally:
                if view is not None:
                    view.close(steps)
                if proc.stdout is not None:
                    proc.stdout.close()
        dockerfile = steps.dockerfile_steps()
        failure = None if code == 0 else diagnose(steps)
        failed = next((s.name for s in steps.steps.values() if s.failed), None)
        return BuildResult(
            ok=code == 0,
            log_tail=steps.tail(),
            error=str(failure) if failure else None,
            failure_kind=failure.kind if failure else None,
            cached_steps=sum(1 for s in dockerfile if s.cached),
            total_steps=len(dockerfile),
            log_path=str(log_path),
            failed_step=failed if code != 0 else None,
        )


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """buildx in its own session (so a cancel reaches it whole), its output merged."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        env=env,
    )


def _cancel(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C or any error: cancel the build (buildx cancels BuildKit's solve on SIGINT)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
