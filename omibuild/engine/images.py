"""The Docker engine's image store as omibuild queries it: labels, digests and one file of an
image, tags, remote manifests, a load of the layers it lacks, the dry prediction; and the one
line every verb gives when the engine does not answer."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from omibuild.engine.containerd import ContentStore
from omibuild.engine.registry import RegistryError, file_in_layer, split_reference
from omibuild.errors import UsageError
from omibuild.store.cache import default_cache_dir
from omibuild.units import parse_size

# Where Docker's containerd listens: its own (dockerd starts it) or the system's.
CONTAINERD_SOCKETS = (
    "/var/run/docker/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
)
# The platform an engine on this machine runs without emulation, as OCI names it.
HOST_PLATFORM = "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(
    platform.machine(), platform.machine()
)


def readiness_timeout(asked: float | None, platform: str | None) -> float:
    """Seconds to wait for an image to become ready: ``asked``, else 60, or 300 where
    ``platform`` is another architecture's (QEMU runs Python's imports 6-7x slower: an iris
    model's runtime, ready in 2-3 s natively, took 16 s alone and over 60 s four at once)."""
    if asked is not None:
        return asked
    return 60.0 if platform is None or same_platform(platform, HOST_PLATFORM) else 300.0


def same_platform(a: str, b: str) -> bool:
    """linux/arm64 is linux/arm64/v8, linux/amd64 any amd64 variant (the default ones)."""
    a_parts, b_parts = a.split("/"), b.split("/")
    return a_parts[:2] == b_parts[:2] and (len(a_parts) < 3 or len(b_parts) < 3 or a == b)


def docker_exe() -> str:
    """The docker CLI: ``DOCKER_BINARY``, else the one on PATH."""
    return os.environ.get("DOCKER_BINARY") or shutil.which("docker") or "docker"


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


@dataclass(frozen=True)
class EngineCache:
    """The engine's build cache: what omibuild's steps hold of it, and its whole size."""

    omibuild: int  # bytes of the records whose step names omibuild's paths (/opt/omi)
    records: int
    total: int


def engine_build_cache() -> EngineCache | None:
    """Read from `docker buildx du --verbose` (the default builder); None when the engine does
    not answer. A record is omibuild's when its step works under /opt/omi."""
    exe = docker_exe()
    try:
        proc = subprocess.run(
            [exe, "buildx", "du", "--verbose"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    ours = records = total = 0
    for block in proc.stdout.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        try:
            size = parse_size(fields.get("Size", ""))
        except ValueError:
            continue  # the totals at the end, or a field buildx added
        total += size
        if "/opt/omi" in fields.get("Description", ""):
            ours, records = ours + size, records + 1
    return EngineCache(ours, records, total)


def docker_context(name: str) -> str | None:
    """``name`` if it is a docker context (another engine), else None. buildx builds on
    another engine's own BuildKit only from that context: ``--builder`` alone refuses."""
    exe = docker_exe()
    try:
        proc = subprocess.run(
            [exe, "context", "inspect", name], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return name if proc.returncode == 0 else None


class EngineImages:
    """The engine's image store and what omibuild asks of it (labels, digests, a file of an
    image, tags, loads, the dry prediction), all through the docker CLI: python-on-whales,
    which `run` and `check` use (engine/containers.py), costs 0.28 s to import (measured
    with cProfile: a quarter of a cached rebuild), for three commands here. With
    ``context``, everything happens on that docker context's engine."""

    def __init__(
        self, stream: TextIO | None = None, context: str | None = None, log_dir: Path | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.context = context
        self.log_dir = log_dir or default_cache_dir() / "logs"  # each build's full log
        self._importer: list[str] | None = None  # [] once known that there is none
        self._ctr: list[str] = []  # ctr on the engine's containerd, namespace moby
        self._socket = ""  # that containerd's socket

    # -- queries ---------------------------------------------------------------------------
    def _cli(self) -> list[str]:
        """The docker CLI, on this executor's context."""
        exe = docker_exe()
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
        try:
            proc = self._query("image", "tag", source, target)
        except (OSError, subprocess.SubprocessError) as err:
            raise engine_error(err) from None
        if proc.returncode != 0:
            raise engine_error(RuntimeError(proc.stderr))

    def image_platforms(self, ref: str) -> tuple[str, ...] | None:
        """The platforms an image in the engine offers (its index's, where containerd's
        client reaches the engine: what BuildKit takes a base from, what `docker run
        --platform` runs), or None when the engine does not hold it (BuildKit then resolves
        a base from its registry). An index's attestation and export manifests
        (``unknown/unknown``) are left out."""
        if self.importer():
            name = containerd_name(ref)
            try:
                proc = subprocess.run(
                    [*self._ctr, "images", "ls", f"name=={name}"],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                proc = None
            rows = proc.stdout.splitlines()[1:] if proc and proc.returncode == 0 else []
            for row in rows:  # REF TYPE DIGEST SIZE PLATFORMS LABELS, SIZE in two words
                parts = row.split()
                if len(parts) >= 6 and parts[0] == name:
                    # an index's attestations and exports are unknown/unknown: not platforms
                    return tuple(p for p in parts[5].split(",") if p and "unknown" not in p)
        out = self._inspect(ref, "{{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}")
        return (out,) if out else None

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

    def importer(self) -> list[str] | None:
        """containerd's own import into the engine's image store (namespace ``moby``), where
        this process can reach it: Docker's containerd image store on this machine's engine,
        ``ctr`` installed and its socket writable; else None, and loads go through `docker
        load`. `docker load` spools the upload, then hands it to containerd; containerd's own
        import, run locally (``--local``: the client writes the content store; through the
        transfer API it measured slower than `docker load`), loaded the same 1 GiB model
        layer in 9.2-10.2 s where `docker load` took 10.7-11.3 s, alternating in one session
        on this machine. ``OMIBUILD_LOAD=docker`` forces `docker load`."""
        if self._importer is not None:
            return self._importer or None
        self._importer = []
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        ctr = shutil.which("ctr")
        local = not self.context and host in (
            "unix:///var/run/docker.sock",
            "unix:///run/docker.sock",
        )
        if os.environ.get("OMIBUILD_LOAD", "auto") != "docker" and local and ctr:
            sock = next((s for s in CONTAINERD_SOCKETS if os.access(s, os.W_OK)), None)
            if sock and self.keeps_blobs():
                self._ctr = [ctr, "--address", sock, "--namespace", "moby"]
                self._socket = sock
                self._importer = [*self._ctr, "images", "import", "--local"]
        return self._importer or None

    def content_blobs(self) -> frozenset[str]:
        """What containerd's content store holds (``ctr content ls``, 0.07 s for 300 blobs
        here), where loads go through its import: the compressed layers BuildKit's cache keeps
        after the image that named them was removed, which a rebuild then need not send."""
        if not self.importer():
            return frozenset()
        try:
            proc = subprocess.run(
                [*self._ctr, "content", "ls", "--quiet"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        if proc.returncode != 0:
            return frozenset()
        return frozenset(ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("sha256:"))

    def load(self, chunks: Iterator[bytes], platforms: int = 1) -> str | None:
        """Stream an OCI archive into the engine: None, or why it failed. One platform's
        image goes through containerd's import where it is reachable (``importer``), any
        other through ``docker load``. Cut short (an error in ``chunks``, Ctrl-C), the engine
        commits no image."""
        importer = self.importer() if platforms == 1 else None
        command = [*importer, "-"] if importer else [*self._cli(), "load", "--quiet"]
        said = _stream(command, chunks)
        return None if said is None else f"loading the image into the engine failed: {said}"

    def content_store(self) -> ContentStore | None:
        """containerd's content store, through its gRPC socket, where loads go through its
        import (``importer``): the model layers are written there as they are read."""
        return ContentStore(self._socket) if self.importer() and self._socket else None

    def ingest(self, chunks: Iterator[bytes]) -> str | None:
        """Stream an OCI archive into containerd through its import, not unpacked
        (``layers_image_archive``: the image that names the model layers written beside the
        build): None, or why not. Only where loads go through containerd's import."""
        importer = self.importer()
        if not importer:
            return "containerd's import is not reachable"
        return _stream([*importer, "--no-unpack", "-"], chunks)

    def describe(self, image: str) -> tuple[bytes | None, str]:
        """The dry prediction on omi.yaml's example, run in the image with no network:
        (outputs.json, what it said) or (None, what it said: its last line says why)."""
        cmd = [*self._cli(), "run", "--rm", "--network", "none"]
        cmd += ["-e", "OMI_VERIFY_MODEL=0", image, "describe", "-"]
        proc = subprocess.run(cmd, capture_output=True, check=False, start_new_session=True)
        said = proc.stderr.decode(errors="replace")[-(64 << 10) :]
        return (proc.stdout, said) if proc.returncode == 0 else (None, said)

    def remove_tag(self, ref: str) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self._query("image", "rm", "--no-prune", ref)

    def _context_args(self) -> list[str]:
        return ["--context", self.context] if self.context else []

    def _docker_cmd(self) -> list[str]:
        return self._cli()


def containerd_name(ref: str) -> str:
    """A reference as the engine's containerd names it (``python:3.11`` is
    ``docker.io/library/python:3.11``), read as Docker reads a name (split_reference)."""
    host, path, tag = split_reference(ref)
    return f"{'docker.io' if host == 'registry-1.docker.io' else host}/{path}:{tag}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines or ["no message"])[-1][:400]


def _stream(command: list[str], chunks: Iterator[bytes]) -> str | None:
    """Feed ``chunks`` to ``command``'s standard input: None, or the last line it said when
    it failed. Cut short (an error in ``chunks``, Ctrl-C), the command is killed with its
    process group, before the archive's end: the engine commits no image."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command,
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
    return None if code == 0 else _last_line(said)
