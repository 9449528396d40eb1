"""Model layers at disk speed (`make bench`, group `layers`): omibuild apply against the I/O
floor (hash plus a durable copy of the same bytes, in a Python loop) and against a plain
`docker buildx build` of a hand-written Dockerfile that COPYs the same model onto the same
base, each measured in the same run, for a model of SIZE bytes in 512 MiB shards.

"Cold" is a fresh omibuild cache and no image; the engine's build cache (dependencies) stays
warm for both, and every round writes a new model, so no model byte is cached anywhere.

Rows: cold build into the local engine and with a push to the loopback registry; model-only
rebuild (every shard rewritten) with and without a push; code-only rebuild with the model
bytes it wrote, counted as the growth of the engine's content store and of the registry's
storage (a code layer is a few kB); the peak memory of `omibuild apply`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

SHARD = 512 << 20
CONTENT_STORE = Path("/var/lib/docker/containerd/daemon/io.containerd.content.v1.content/blobs")
REGISTRY_STORE = Path(os.environ.get("OMI_REGISTRY_STORE", "/var/lib/omibuild-dev/registry"))

PREDICTOR = '''"""A stand-in for a large model: loading is reading the weights' size."""
from pathlib import Path


class Predictor:
    def load(self, model_dir):
        self.size = sum(p.stat().st_size for p in Path(model_dir).glob("*.bin"))

    def predict(self, instances):
        return [self.size for _ in instances]
'''


def _write_shards(model: Path, size: int) -> None:
    for old in model.glob("*.bin"):
        old.unlink()
    written, i = 0, 0
    while written < size:
        n = min(SHARD, size - written)
        with open(model / f"shard-{i:03d}.bin", "wb") as fh:
            for _ in range(n // (16 << 20)):
                fh.write(os.urandom(16 << 20))
            fh.write(os.urandom(n % (16 << 20)))
        written, i = written + n, i + 1


def io_floor(model: Path, scratch: Path) -> float:
    """Hash and durably copy every shard: what any tool must at least do with the bytes."""
    start = time.perf_counter()
    for shard in sorted(model.glob("*.bin")):
        h = hashlib.sha256()
        dst = scratch / shard.name
        with open(shard, "rb") as fin, open(dst, "wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        dst.unlink()
    return time.perf_counter() - start


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _one_layer_archive(model: Path, scratch: Path, name: str) -> tuple[Path, Path, str]:
    """The baselines' image: the model's files as one uncompressed layer (under /models) in an
    OCI archive named ``name``, written with the standard library. Returns the archive, the
    layer's file and its digest."""
    layer = scratch / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(model.glob("*.bin")):
            tar.add(f, arcname=f"models/{f.name}")
    digest, size = _sha256(layer), layer.stat().st_size
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {},
         "rootfs": {"type": "layers", "diff_ids": [digest]}}
    ).encode()  # fmt: skip
    layer_type = "application/vnd.oci.image.layer.v1.tar"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": len(config),
    }
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": config_desc, "layers": [{"mediaType": layer_type, "digest": digest,
                                            "size": size}]}
    ).encode()  # fmt: skip
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": manifest_digest, "size": len(manifest),
             "annotations": {"io.containerd.image.name": name,
                             "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]}
    ).encode()  # fmt: skip
    archive = scratch / "image.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:

        def small(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        small("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        small(f"blobs/sha256/{config_desc['digest'][7:]}", config)
        small(f"blobs/sha256/{manifest_digest[7:]}", manifest)
        tar.add(layer, arcname=f"blobs/sha256/{digest[7:]}")
        small("index.json", index)
    return archive, layer, digest


def docker_load(archive: Path) -> float:
    """`docker load` of the archive: the engine's own speed for the same bytes."""
    start = time.perf_counter()
    proc = subprocess.run(["docker", "load", "-q", "-i", str(archive)], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"docker load failed: {proc.stderr[-2000:]!r}")
    return time.perf_counter() - start


def hashed_upload(layer: Path, registry: str, repository: str) -> float:
    """The registry's own speed for the same bytes: hash the layer, then one monolithic
    upload of it (POST, then curl's PUT of the file with its digest)."""
    start = time.perf_counter()
    digest = _sha256(layer)
    post = urllib.request.Request(
        f"http://{registry}/v2/{repository}/blobs/uploads/", method="POST", data=b""
    )
    with urllib.request.urlopen(post, timeout=60) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    subprocess.run(
        ["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
         "--upload-file", str(layer), f"{location}{sep}digest={digest}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def disk_needed(size: int) -> int:
    """What the group writes at its peak for a model of ``size`` bytes: the model, the
    baselines' layer and archive, the engine's content and unpacked snapshot of two images
    (omibuild's and the baseline's), and the registry's copy, with a 10% margin."""
    return int(size * 7 * 1.1)


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``cmd`` under GNU time's accounting of the largest process it ran."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["python3", "-c", _RSS_PROBE, *cmd],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} failed: {proc.stderr[-2000:]}")
    return elapsed, int(proc.stdout.strip().splitlines()[-1])


# A fresh process per measurement, so RUSAGE_CHILDREN is this command's alone: the largest
# resident set of any process it waited for (omibuild, buildx, docker load), in bytes.
_RSS_PROBE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if proc.returncode:
    sys.stderr.write(proc.stderr[-2000:]); sys.exit(proc.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _repo(work: Path, base: str, registry: str, label: str) -> Path:
    repo = work / f"layers-{label}"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "model").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "src" / "predictor.py").write_text(PREDICTOR)
    (repo / "omi.yaml").write_text(
        f"""apiVersion: omibuild/v1
name: layers-{label}
version: 1.0.0
model:
  source: {{local: {{path: model}}}}
  flavor: custom
  predictor: predictor:Predictor
code: {{path: src}}
runtimes:
  interfaces: {{kfserving: {{protocols: [v1]}}}}
image:
  repository: {registry}/omibuild-bench/layers-{label}
origin: {{tag: none, tags: [latest]}}
"""
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _plain_ctx(repo: Path, base: str) -> Path:
    """The hand-written baseline: the same model COPYed onto the same base."""
    (repo / "Dockerfile.plain").write_text(f"FROM {base}\nCOPY model/ /opt/omi/model/\n")
    return repo / "Dockerfile.plain"


def bench_model_layers(
    work: Path,
    size: int,
    reps: int,
    *,
    base: str,
    registry: str,
    py: str,
    record: Callable[..., object],
    log: Callable[[str], None],
) -> None:
    label = f"{size >> 30}g"
    group = f"model layers: {size >> 30} GiB model"
    repo = _repo(work, base, registry, label)
    model = repo / "model"
    cache = work / f"omicache-{label}"
    env = {"OMIBUILD_CACHE_DIR": str(cache)}
    apply = [py, "-m", "omibuild", "apply", str(repo / "omi.yaml"), "--progress", "quiet"]
    image = f"{registry}/omibuild-bench/layers-{label}"
    plain = f"{registry}/omibuild-bench/plain-{label}"
    dockerfile = _plain_ctx(repo, base)
    plain_cmd = ["docker", "buildx", "build", "-q", "-f", str(dockerfile), str(repo)]
    scratch = work / "floor"
    scratch.mkdir(exist_ok=True)

    def clean() -> None:
        subprocess.run(
            "docker images --format '{{.Repository}}:{{.Tag}}' | grep omibuild-bench/ | "
            "xargs -r docker rmi -f",
            shell=True,
            capture_output=True,
        )
        subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)
        _registry_gc()

    def new_model() -> float:
        _write_shards(model, size)
        floor = io_floor(model, scratch)
        os.sync()  # the new model's own writeback is the bench's cost, not the next run's
        return floor

    def new_code(i: int) -> None:
        (repo / "src" / "predictor.py").write_text(PREDICTOR + f"\n# revision {i} {time.time()}\n")

    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    log(f"{group}: writing the model")
    for i in range(reps):
        for push in (False, True):
            how = " with push" if push else ""
            clean()
            shutil.rmtree(cache, ignore_errors=True)
            add("floor", new_model())
            # cold: no omibuild cache, no engine build cache, no image
            seconds, rss = _peak_rss([*apply, *(["--push"] if push else [])], env)
            add(f"cold{how}", seconds)
            add("rss", rss)
            add(f"plain cold{how}", _plain(plain_cmd, plain, push))
            # model-only: every shard new
            add("floor", new_model())
            seconds, rss = _peak_rss([*apply, *(["--push"] if push else [])], env)
            add(f"model{how}", seconds)
            add("rss", rss)
            add(f"plain model{how}", _plain(plain_cmd, plain, push))
            # the engine's and the registry's own speed for the same model bytes
            archive, layer, _ = _one_layer_archive(model, scratch, f"{plain}-load:latest")
            os.sync()  # as before omibuild's run: nothing of the setup left to write back
            if push:
                add("hashed upload", hashed_upload(layer, registry, f"omibuild-bench/up-{label}"))
            else:
                add("docker load", docker_load(archive))
            archive.unlink()
            layer.unlink()
            # code-only: count what reached the engine's store and the registry
            new_code(i)
            before = (_du(CONTENT_STORE), _du(REGISTRY_STORE))
            seconds, rss = _peak_rss([*apply, *(["--push"] if push else [])], env)
            after = (_du(CONTENT_STORE), _du(REGISTRY_STORE))
            add(f"code{how}", seconds)
            add(f"code{how} engine bytes", max(0, after[0] - before[0]))
            add(f"code{how} registry bytes", max(0, after[1] - before[1]))
            add("rss", rss)
    clean()
    del image
    floor = rows["floor"]
    for name, what, limit in (
        ("cold", "cold build into the local engine", None),
        ("cold with push", "cold build, pushed to the loopback registry", None),
        ("model", "model-only rebuild into the local engine", 3.0),
        ("model with push", "model-only rebuild, pushed", 2.0),
    ):
        record(
            group,
            f"{what} vs the I/O floor",
            rows[name],
            "s",
            baseline=floor,
            baseline_name="hash + durable copy of the model",
            target=f"≤ {limit}x" if limit else "",
            check=(lambda v, r, limit=limit: r is not None and r <= limit) if limit else None,
        )
        record(
            group,
            f"{what} vs a plain buildx COPY",
            rows[name],
            "s",
            baseline=rows[f"plain {name}"],
            baseline_name="docker buildx build of FROM base + COPY model/",
        )
    for name, what, base, base_name, limit in (
        ("model", "model-only rebuild into the local engine", "docker load",
         "docker load of a one-layer archive of the same files", 1.0),
        ("model with push", "model-only rebuild, pushed", "hashed upload",
         "a hashed upload of the same bytes to the same registry", 1.2),
    ):  # fmt: skip
        record(
            group,
            f"{what} vs {base}",
            rows[name],
            "s",
            baseline=rows[base],
            baseline_name=base_name,
            target=f"≤ {limit}x",
            check=lambda v, r, limit=limit: r is not None and r <= limit,
        )
    for how in ("", " with push"):
        record(
            group,
            f"code-only rebuild{how}",
            rows[f"code{how}"],
            "s",
            baseline=rows[f"model{how}"],
            baseline_name="model-only rebuild",
        )
        for where in ("engine", "registry"):
            record(
                group,
                f"code-only rebuild{how}: bytes the {where} stored",
                rows[f"code{how} {where} bytes"],
                "B",
                target="< 1 MiB (no model bytes)",
                check=lambda v, r: v < (1 << 20),
            )
    record(
        group,
        "peak memory of any process omibuild apply ran (the largest of every run)",
        [max(rows["rss"]) / 1e6],
        "MB",
        target="< 300 MB",
        check=lambda v, r: v < 300,
    )


def _registry_gc() -> None:
    """Drop the bench's repositories from the loopback registry and collect their blobs: each
    round pushes a new model, and the registry never frees space by itself."""
    repos = REGISTRY_STORE / "docker" / "registry" / "v2" / "repositories" / "omibuild-bench"
    if repos.exists():
        shutil.rmtree(repos, ignore_errors=True)
        conf = Path(os.environ.get("OMI_REGISTRY_CONF", "/var/lib/omibuild-dev/registry.yml"))
        subprocess.run(
            ["docker-registry", "garbage-collect", str(conf)], capture_output=True, check=False
        )


def _plain(cmd: list[str], ref: str, push: bool) -> float:
    start = time.perf_counter()
    out = ["--push", "-t", ref] if push else ["--load", "-t", ref]
    proc = subprocess.run([*cmd, *out], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain buildx build failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start
