"""The buildx executor: the only module that talks to the Docker engine (python-on-whales).

Builds run ``docker buildx build`` with plain progress, streamed: on a terminal a live view
of the BuildKit steps, in CI plain lines, and on failure the failing step, its log tail and
the Dockerfile excerpt BuildKit points at."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TextIO

from omibuild.engine.failures import diagnose
from omibuild.engine.progress import (
    Events,
    GithubView,
    LineView,
    Steps,
    TtyView,
    new_log,
    view_kind,
)
from omibuild.engine.registry import RegistryError, file_in_layer
from omibuild.engine.request import BuildRequest, BuildResult, BuildSecret
from omibuild.errors import UsageError
from omibuild.sources.cache import default_cache_dir

if TYPE_CHECKING:
    from python_on_whales import DockerClient

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


def engine_error(err: Exception) -> UsageError:
    """The one line every verb gives when the engine does not answer (exit 2)."""
    text = str(err)
    where = os.environ.get("DOCKER_HOST") or "the local socket"
    if "Cannot connect" in text or "connection refused" in text.lower() or "dial unix" in text:
        return UsageError(
            f"cannot reach the Docker engine at {where}",
            hint="start Docker (or `make setup` on this repository's machines), or set DOCKER_HOST",
        )
    said = re.search(r"Error response from daemon: ([^\n']+)", text)
    if said and "address already in use" in said.group(1):
        port = re.search(r":(\d+): bind: address already in use", said.group(1))
        return UsageError(
            f"port {port.group(1) if port else '(one of them)'} is already in use on this machine",
            hint="pick another --port, or stop what listens there",
        )
    if said:
        return UsageError(f"the Docker engine refused: {said.group(1).strip()[:300]}")
    last = [ln for ln in text.splitlines() if ln.strip()]
    return UsageError(f"the Docker engine refused: {(last or ['no message'])[-1][:300]}")


def docker_context(name: str) -> str | None:
    """``name`` if it is a docker context (another engine), else None. buildx builds on
    another engine's own BuildKit only from that context: ``--builder`` alone refuses."""
    exe = os.environ.get("DOCKER_BINARY") or shutil.which("docker") or "docker"
    try:
        proc = subprocess.run(
            [exe, "context", "inspect", name], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return name if proc.returncode == 0 else None


class BuildxExecutor:
    """python-on-whales is imported on first use: it costs ~0.3 s, and `plan` needs only
    one quick query of the engine. With ``context``, everything (the build, the image
    store, tags) happens on that docker context's engine."""

    def __init__(
        self, stream: TextIO | None = None, context: str | None = None, log_dir: Path | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.context = context
        self.log_dir = log_dir or default_cache_dir() / "logs"  # each build's full log
        self._docker: DockerClient | None = None

    @property
    def docker(self) -> DockerClient:
        if self._docker is None:
            from python_on_whales import DockerClient

            self._docker = DockerClient(context=self.context)
        return self._docker

    # -- queries ---------------------------------------------------------------------------
    def _cli(self) -> list[str]:
        """The docker CLI, on this executor's context."""
        exe = os.environ.get("DOCKER_BINARY") or shutil.which("docker") or "docker"
        return [exe, *self._context_args()]

    def _query(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A fast query through the docker CLI (no client library import); OSError or
        SubprocessError when the CLI cannot run."""
        return subprocess.run(
            [*self._cli(), *args], capture_output=True, text=True, timeout=30, check=False
        )

    def _inspect(self, ref: str, fmt: str) -> str | None:
        try:
            proc = self._query("image", "inspect", "--format", fmt, ref)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    def image_labels(self, ref: str) -> dict[str, str] | None:
        out = self._inspect(ref, "{{json .Config.Labels}}")
        if out is None:
            return None
        labels: dict[str, str] = json.loads(out) or {}
        return labels

    def image_digest(self, ref: str) -> str | None:
        return self._inspect(ref, "{{.Id}}")

    def image_file(self, ref: str, path: str, limit: int) -> bytes | None:
        """One file of an image in the engine, read without running it: a container is
        created (never started), the file copied out as a tar, the container removed."""
        try:
            created = self._query("create", ref)
            if created.returncode != 0:
                return None
            cid = created.stdout.strip()
            try:
                copied = subprocess.run(
                    [*self._cli(), "cp", f"{cid}:{path}", "-"],
                    capture_output=True, timeout=60, check=False,
                )  # fmt: skip
            finally:
                self._query("rm", "-f", cid)
        except (OSError, subprocess.SubprocessError):
            return None
        if copied.returncode != 0 or len(copied.stdout) > limit + (1 << 20):
            return None
        try:
            return file_in_layer(copied.stdout, PurePosixPath(path).name, limit)
        except (RegistryError, KeyError, tarfile.TarError):
            return None

    def unreachable(self) -> UsageError | None:
        """The one engine-unreachable error every verb gives (exit 2), or None when the engine
        answers: asked before a build would fail on it with BuildKit's own words."""
        try:
            proc = self._query("version", "--format", "{{.Server.Version}}")
        except (OSError, subprocess.SubprocessError) as err:
            return engine_error(err)
        return engine_error(RuntimeError(proc.stderr)) if proc.returncode != 0 else None

    def image_size(self, ref: str) -> int | None:
        out = self._inspect(ref, "{{.Size}}")
        return int(out) if out and out.isdigit() else None

    def remote_annotations(self, ref: str) -> dict[str, str] | None:
        cmd = [*self._docker_cmd(), "buildx", "imagetools", "inspect", "--raw", ref]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            return None
        try:
            annotations: dict[str, str] = json.loads(proc.stdout).get("annotations") or {}
        except ValueError:
            return None
        return annotations

    def remote_labels(self, ref: str) -> dict[str, str] | None:
        fmt = "{{json .Image}}"
        cmd = [*self._docker_cmd(), "buildx", "imagetools", "inspect", ref, "--format", fmt]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            image = json.loads(proc.stdout) if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        if isinstance(image, dict) and "config" not in image and image:
            image = next(iter(image.values()))  # an index: one config per platform, same labels
        if not isinstance(image, dict):
            return None
        labels = (image.get("config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None

    def tag(self, source: str, target: str) -> None:
        self.docker.image.tag(source, target)

    def image_layers(self, ref: str) -> list[str]:
        """The diff ids of a local image's layers (none when there is no such image)."""
        out = self._inspect(ref, "{{json .RootFS.Layers}}")
        try:
            layers = json.loads(out) if out else []
        except ValueError:
            return []
        return [str(x) for x in layers] if isinstance(layers, list) else []

    def keeps_blobs(self) -> bool:
        """Does the engine keep the blobs of the images it holds (the containerd image store),
        so a load may leave out the ones it has? The classic store needs every layer."""
        try:
            proc = self._query("info", "--format", "{{json .DriverStatus}}")
        except (OSError, subprocess.SubprocessError):
            return False
        return "io.containerd.snapshotter" in proc.stdout

    def load(self, chunks: Iterator[bytes]) -> str | None:
        """Stream an OCI archive into the engine (``docker load``): None, or why it failed.
        Cut short (an error in ``chunks``, Ctrl-C), the engine commits no image."""
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [*self._cli(), "load", "--quiet"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            assert proc.stdin is not None
            try:
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                code = proc.wait()
            except BrokenPipeError:
                code = proc.wait()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            err.seek(0)
            said = err.read(64 << 10).decode(errors="replace")
        if code == 0:
            return None
        return f"loading the image into the engine failed: {_last_line(said)}"

    def describe(self, image: str) -> tuple[bytes | None, str]:
        """The dry prediction on omi.yaml's example, run in the image with no network:
        (outputs.json, what it said) or (None, what it said: its last line says why)."""
        cmd = [*self._cli(), "run", "--rm", "--network", "none"]
        cmd += ["-e", "OMI_VERIFY_MODEL=0", image, "describe", "-"]
        proc = subprocess.run(cmd, capture_output=True, check=False, start_new_session=True)
        said = proc.stderr.decode(errors="replace")[-(64 << 10) :]
        return (proc.stdout, said) if proc.returncode == 0 else (None, said)

    def remove_tag(self, ref: str) -> None:
        from python_on_whales.exceptions import DockerException

        with contextlib.suppress(DockerException):
            self.docker.image.remove(ref, force=False, prune=False)

    # -- building --------------------------------------------------------------------------
    def _context_args(self) -> list[str]:
        return ["--context", self.context] if self.context else []

    def _docker_cmd(self) -> list[str]:
        return [str(part) for part in self.docker.client_config.docker_cmd]

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
        if req.sbom:
            cmd += ["--sbom=true"]
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
            steps = Steps(log)
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


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines or ["no message"])[-1][:400]


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
