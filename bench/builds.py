"""Bench groups: CLI latency, hashing, builds (the sklearn example and a synthetic model)
and image size against `mlflow models build-docker`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import BASE, CA, IRIS_MODEL, PY, REGISTRY, ROOT, log, omibuild, record, run, timed

# -- CLI latency and hashing ------------------------------------------------------------------


def bench_cli(reps: int) -> None:
    example = ROOT / "examples/manifests/sklearn-iris/omi.yaml"
    run(omibuild("plan", str(example), "--format", "json"))  # warm the hash memo and lock
    floor = [timed([PY, "-c", "pass"]) for _ in range(reps)]
    validate = [timed(omibuild("validate", str(example))) for _ in range(reps)]
    plan = [timed(omibuild("plan", str(example), "--dockerfile")) for _ in range(reps)]
    record(
        "cli",
        "omibuild validate (example), wall time",
        validate,
        "s",
        baseline=floor,
        baseline_name="python -c pass",
        target="≤ 0.3 s",
        check=lambda v, r: v <= 0.3,
    )
    record(
        "cli",
        "omibuild plan (example), wall time",
        plan,
        "s",
        baseline=floor,
        baseline_name="python -c pass",
        target="≤ 0.5 s",
        check=lambda v, r: v <= 0.5,
    )


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        chunk = 16 << 20
        for _ in range(size // chunk):
            fh.write(os.urandom(chunk))
        fh.write(os.urandom(size % chunk))  # the "1 MB" model was 0 bytes without it


def io_floor(src: Path, dst: Path) -> float:
    """Hash and copy the bytes with a plain Python loop: what any tool must at least do."""
    import hashlib

    start = time.perf_counter()
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(1 << 20):
            h.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def bench_hashing(work: Path, big: Path, reps: int) -> None:
    sys.path.insert(0, str(ROOT))
    from omibuild.store.hashing import sha256_file

    size = big.stat().st_size
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        sha256_file(big)
        samples.append(size / (time.perf_counter() - start) / 1e9)
    record(
        "hashing",
        "sha256 of a 1 GiB file (omibuild, one core)",
        samples,
        "GB/s",
        target="≥ 1 GB/s per core",
        check=lambda v, r: v >= 1.0,
    )


# -- builds -----------------------------------------------------------------------------------

SYNTH_PREDICTOR = '''
class Echo:
    """A stand-in for a large model: loading is reading the weights' size."""

    def load(self, model_dir):
        self.size = (model_dir / "weights.bin").stat().st_size

    def predict(self, instances):
        return [[self.size] for _ in instances]
'''


def synthetic_repo(work: Path, weights: Path, name: str = "synthetic-1g") -> Path:
    repo = work / name
    (repo / "model").mkdir(parents=True)
    (repo / "src").mkdir()
    os.link(weights, repo / "model" / "weights.bin")
    (repo / "src" / "predictor.py").write_text(SYNTH_PREDICTOR)
    (repo / "omi.yaml").write_text(f"""\
apiVersion: omibuild/v1
name: {name}
model:
  source: {{local: {{path: model}}}}
  flavor: custom
  predictor: predictor:Echo
code: {{path: src}}
runtimes:
  interfaces: {{kfserving: {{protocols: [v1]}}}}
image:
  repository: {REGISTRY}/bench/{name}
origin: {{tag: none, tags: [latest]}}
""")
    return repo / "omi.yaml"


def prune_dangling() -> None:
    """Rebuilt images leave untagged predecessors: 2.6 GB each for the 1 GiB model."""
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)


def remove_bench_images() -> None:
    refs = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    mine = [r for r in refs if "/bench/" in r or r.startswith("omibuild-bench/")]
    if mine:
        subprocess.run(["docker", "rmi", "-f", *mine], capture_output=True)
    prune_dangling()


def example_repo(work: Path) -> Path:
    repo = work / "sklearn-iris"
    shutil.copytree(
        ROOT / "examples/manifests/sklearn-iris", repo, ignore=shutil.ignore_patterns("omi.lock")
    )
    text = (repo / "omi.yaml").read_text().replace("examples/iris-classifier", "bench/iris")
    (repo / "omi.yaml").write_text(text)
    return repo / "omi.yaml"


def bench_build(
    label: str,
    manifest: Path,
    change_model: Callable[[int], None],
    change_code: Callable[[int], None],
    reps: int,
    env: dict[str, str],
    floor: Callable[[], float] | None = None,
    code_label: str = "code-only",
) -> None:
    apply = omibuild("apply", str(manifest), "--progress", "quiet")
    cold = []
    for _ in range(max(1, reps // 2)):
        shutil.rmtree(env["OMIBUILD_CACHE_DIR"], ignore_errors=True)
        cold.append(timed([*apply, "--no-cache"], env))
        prune_dangling()
    noop = [timed(apply, env) for _ in range(reps)]
    model, code, floors = [], [], []
    for i in range(reps):
        change_model(i)
        if floor:
            floors.append(floor())
        model.append(timed(apply, env))
        prune_dangling()
        change_code(i)
        code.append(timed(apply, env))
        prune_dangling()
    record(f"build: {label}", "cold build (no cache)", cold, "s")
    record(
        f"build: {label}",
        "no-op apply",
        noop,
        "s",
        baseline=cold,
        baseline_name="cold build",
        target="≤ 1.5 s" if "1 GiB" in label else "",
        check=(lambda v, r: v <= 1.5) if "1 GiB" in label else None,
    )
    record(
        f"build: {label}",
        "model-only rebuild",
        model,
        "s",
        baseline=cold,
        baseline_name="cold build",
    )
    record(
        f"build: {label}",
        f"{code_label} rebuild",
        code,
        "s",
        baseline=cold,
        baseline_name="cold build",
    )
    if floor:
        record(
            f"build: {label}",
            "model-only rebuild vs the I/O floor",
            model,
            "s",
            baseline=floors,
            baseline_name="hash + copy in a Python loop",
        )


def bench_builds(work: Path, weights: Path, reps: int) -> None:
    env = {"OMIBUILD_CACHE_DIR": str(work / "omicache")}
    iris = example_repo(work)

    def iris_model(i: int) -> None:
        (iris.parent / "model" / "notes.txt").write_text(f"model revision {i} {time.time()}\n")

    def iris_code(i: int) -> None:
        text = iris.read_text().replace("version: 1.0.0", f"version: 1.0.{i + 1}")
        iris.write_text(re.sub(r"version: 1\.0\.\d+", f"version: 1.0.{i + 1}", text))

    bench_build(
        "sklearn example",
        iris,
        iris_model,
        iris_code,
        reps,
        env,
        code_label="metadata-only (version bump)",
    )

    synth = synthetic_repo(work, weights)
    shard = synth.parent / "model" / "weights.bin"

    def synth_model(i: int) -> None:
        shard.unlink()
        write_random(shard, weights.stat().st_size)  # new weights, same size

    def synth_code(i: int) -> None:
        (synth.parent / "src" / "predictor.py").write_text(SYNTH_PREDICTOR + f"\n# revision {i}\n")

    bench_build(
        "1 GiB synthetic model",
        synth,
        synth_model,
        synth_code,
        reps,
        env,
        floor=lambda: io_floor(shard, work / "floor-copy.bin"),
    )

    # The same model-only rebuild without exporting the cache to a directory (the engine's own
    # build cache still applies): what `build.cache.enabled: false` buys.
    synth.write_text(synth.read_text() + "build:\n  cache: {enabled: false}\n")
    apply = omibuild("apply", str(synth), "--progress", "quiet")
    timed(apply, env)
    no_export, floors = [], []
    for i in range(reps):
        synth_model(i)
        floors.append(io_floor(shard, work / "floor-copy.bin"))
        no_export.append(timed(apply, env))
        prune_dangling()
    record(
        "build: 1 GiB synthetic model",
        "model-only rebuild, no cache export, vs the I/O floor",
        no_export,
        "s",
        baseline=floors,
        baseline_name="hash + copy in a Python loop",
    )
    from inner_loop import bench_inner_loop, report_test_disk  # bench/ is on sys.path

    bench_inner_loop(work, reps)
    report_test_disk(ROOT)
    from supply_chain import bench_supply_chain

    bench_supply_chain(work, reps)


# -- image size -------------------------------------------------------------------------------


def docker_build(ctx: Path, ref: str, *extra: str) -> None:
    """A plain buildx build on the local engine, with the host CA as a secret for pip."""
    cmd = ["docker", "buildx", "build", "--progress=quiet", str(ctx), "--secret", f"id=ca,src={CA}"]
    for attempt in (1, 2):  # a package mirror may fail once; retry before giving up
        try:
            run([*cmd, *extra, "--output", f"type=image,name={ref}"], timeout=1800)
            return
        except RuntimeError as err:
            if attempt == 2:
                raise
            log(f"build of {ref} failed, retrying once: {str(err)[-300:]}")


def pull_size(ref: str, *, pushed: bool = False) -> int:
    """What a platform downloads: the sum of the pushed manifest's (gzip) layer sizes."""
    remote = ref
    if not pushed:
        remote = f"{REGISTRY}/bench/size-{abs(hash(ref)) % 10**8}:latest"
        run(["docker", "tag", ref, remote])
        run(["docker", "push", "-q", remote], timeout=1800)
    index = json.loads(run(["docker", "buildx", "imagetools", "inspect", "--raw", remote]).stdout)
    if "manifests" in index:
        digest = next(
            m["digest"]
            for m in index["manifests"]
            if m.get("platform", {}).get("architecture") != "unknown"
        )
        index = json.loads(
            run(
                [
                    "docker",
                    "buildx",
                    "imagetools",
                    "inspect",
                    "--raw",
                    f"{remote.rsplit(':', 1)[0]}@{digest}",
                ]
            ).stdout
        )
    return sum(int(layer["size"]) for layer in index["layers"])


def du(ref: str, *paths: str) -> int:
    """Unpacked bytes under paths inside an image."""
    out = run(["docker", "run", "--rm", "--entrypoint", "du", ref, "-sbc", *paths]).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def adapt_mlflow_dockerfile(text: str) -> str:
    """Build MLflow's own Dockerfile on our base: same approach, same starting point. Only
    what the offline base needs changes: its name, `python`/`pip` on PATH, and the CA bundle
    as a secret for pip (as omibuild's own builds get it)."""
    text = re.sub(
        r"^FROM .*$",
        f"FROM {BASE}\nRUN ln -sf /usr/bin/python3 /usr/local/bin/python"
        " && ln -sf /usr/bin/pip3 /usr/local/bin/pip\nENV PIP_BREAK_SYSTEM_PACKAGES=1",
        text,
        count=1,
        flags=re.M,
    )
    secret = (
        "RUN --mount=type=secret,id=ca,required=false --mount=type=cache,target=/root/.cache/pip"
        " export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; "
    )
    return re.sub(r"^RUN (pip install|python -c)", lambda m: secret + m.group(1), text, flags=re.M)


def bench_size(work: Path) -> None:
    import joblib  # noqa: F401  (the model is the example's)

    model_dir = work / "mlflow-model"
    # Explicit requirements: inferred ones would list whatever this process has imported.
    import sklearn

    reqs = [
        f"scikit-learn=={sklearn.__version__}",
        "numpy",
        "scipy",
        "pandas",
        "skops",
        "cloudpickle",
    ]
    code = (
        "import warnings; warnings.simplefilter('ignore'); import joblib, mlflow.sklearn; "
        f"mlflow.sklearn.save_model(joblib.load({str(IRIS_MODEL)!r}), {str(model_dir)!r}, "
        f"pip_requirements={reqs!r})"
    )
    run([PY, "-c", code])
    out = work / "mlflow-docker"
    run(
        [
            str(Path(PY).with_name("mlflow")),
            "models",
            "generate-dockerfile",
            "-m",
            str(model_dir),
            "-d",
            str(out),
            "--env-manager",
            "local",
        ]
    )
    dockerfile = out / "Dockerfile"
    dockerfile.write_text(adapt_mlflow_dockerfile(dockerfile.read_text()))
    mlflow_ref = "omibuild-bench/mlflow-build-docker:latest"
    log("building the mlflow models build-docker image (its Dockerfile, our base)")
    docker_build(out, mlflow_ref)
    # omibuild, serving the same MLflow model directory as a local pyfunc source
    repo = work / "mlflow-omibuild"
    shutil.copytree(model_dir, repo / "model")
    (repo / "omi.yaml").write_text(f"""\
apiVersion: omibuild/v1
name: iris-pyfunc
model:
  source: {{local: {{path: model}}}}
  flavor: pyfunc
image:
  repository: {REGISTRY}/bench/iris-pyfunc
origin: {{tags: [latest]}}
""")
    env = {**os.environ, "OMIBUILD_CACHE_DIR": str(work / "omicache")}
    run(
        omibuild("apply", str(repo / "omi.yaml"), "--push", "--progress", "quiet"),
        env=env,
        timeout=1800,
    )
    ours = pull_size(f"{REGISTRY}/bench/iris-pyfunc:latest", pushed=True)
    theirs = pull_size(mlflow_ref)
    record(
        "image size",
        "same MLflow model, compressed pull size: omibuild vs mlflow models build-docker",
        [ours / 1e6],
        "MB",
        baseline=[theirs / 1e6],
        baseline_name="mlflow models build-docker",
        target="≤ 0.5x",
        check=lambda v, r: r is not None and r <= 0.5,
    )
    bench_runtime_overhead(work)


def ensure_iris(work: Path) -> str:
    """The sklearn example image the size and serving groups use (built by the build group)."""
    ref = f"{REGISTRY}/bench/iris:latest"
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
        manifest = example_repo(work / "iris-for-serving")
        run(omibuild("apply", str(manifest), "--progress", "quiet"), timeout=1800)
    return ref


def bench_runtime_overhead(work: Path) -> None:
    """The runtime's own bytes: the iris image minus (base + the model's own venv + model)."""
    ref = ensure_iris(work)
    reqs = (ROOT / "examples/manifests/sklearn-iris/model/requirements.txt").read_text()
    ctx = work / "deps-only"
    ctx.mkdir()
    (ctx / "requirements.txt").write_text(reqs)
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE}\nRUN python3 -m venv /opt/omi/venv\nCOPY requirements.txt /r.txt\n"
        "RUN --mount=type=secret,id=ca,required=false --mount=type=cache,target=/root/.cache/pip "
        "export PIP_CERT=/run/secrets/ca; /opt/omi/venv/bin/pip install -r /r.txt\n"
        "COPY --link slim.py /tmp/slim.py\n"
        "RUN /opt/omi/venv/bin/python /tmp/slim.py /opt/omi/venv /r.txt\n"
        "COPY --link model/ /opt/omi/model/\n"
    )
    # slimmed as omibuild slims its own venv, so the difference is the runtime's own bytes
    shutil.copy(ROOT / "omibuild/runtime/slim.py", ctx / "slim.py")
    shutil.copytree(ROOT / "examples/manifests/sklearn-iris/model", ctx / "model")
    deps_ref = "omibuild-bench/deps-only:latest"
    docker_build(ctx, deps_ref)
    ours = du(ref, "/opt/omi/venv", "/opt/omi/runtime", "/opt/omi/code", "/opt/omi/omi.json")
    overhead = (ours - du(deps_ref, "/opt/omi/venv")) / 1e6
    record(
        "image size",
        "runtime overhead above base + model deps + model, unpacked (all interfaces)",
        [overhead],
        "MB",
        target="≤ 30 MB",
        check=lambda v, r: v <= 30,
    )
