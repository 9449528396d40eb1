"""`make bench`: side-by-side benchmarks, repeated, reported as ratios against a baseline
measured in the same run. Writes bench/results/latest.json and bench/results/latest.md.

Groups: CLI latency, hashing, builds (the sklearn example and a 1 GiB synthetic model), model
layers (1 and 10 GiB models against the I/O floor and a plain buildx COPY:
bench/model_layers.py), image size (against `mlflow models build-docker`), image size per
everyday format (against a hand-written Dockerfile: bench/formats.py), serving and cold
start (against MLServer), explanations and drift (bench/analysis.py), and a soak (c=32 with
invalid requests mixed in: errors, p99 drift, memory growth)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
BASE = os.environ.get("OMI_BASE_IMAGE", "omibuild.local/python:3.11-slim")
REGISTRY = os.environ.get("OMI_REGISTRY_ADDR", "127.0.0.1:5000")
CA = os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
IRIS_MODEL = ROOT / "examples/manifests/sklearn-iris/model/model.joblib"
CPUS = "1"  # every server under test gets one core; the load generator has the other


@dataclass
class Figure:
    group: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    holds: bool | None = None
    samples: list[float] = field(default_factory=list)
    spread: float = 0.0  # (max - min) / median of the samples

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


FIGURES: list[Figure] = []
FAILURES: list[str] = []


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def median_of(samples: list[float]) -> tuple[float, float]:
    med = statistics.median(samples)
    return med, (max(samples) - min(samples)) / med if med else 0.0


def record(
    group: str,
    name: str,
    samples: list[float],
    unit: str,
    *,
    baseline: list[float] | None = None,
    baseline_name: str = "",
    target: str = "",
    check: Callable[[float, float | None], bool] | None = None,
) -> Figure:
    value, spread = median_of(samples)
    base = median_of(baseline)[0] if baseline else None
    fig = Figure(group, name, value, unit, base, baseline_name, target, None, samples, spread)
    if check is not None:
        fig.holds = check(value, fig.ratio)
    FIGURES.append(fig)
    shown = f"{value:.4g} {unit}" + (f" vs {base:.4g} ({fig.ratio:.2f}x)" if base else "")
    log(
        f"{group}: {name}: {shown}"
        + (f" target {target}: {'holds' if fig.holds else 'MISSED'}" if target else "")
    )
    return fig


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return elapsed


def omibuild(*args: str) -> list[str]:
    return [PY, "-m", "omibuild", *args]


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
    from omibuild.sources.hashing import sha256_file

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


def synthetic_repo(work: Path, weights: Path) -> Path:
    repo = work / "synthetic"
    (repo / "model").mkdir(parents=True)
    (repo / "src").mkdir()
    os.link(weights, repo / "model" / "weights.bin")
    (repo / "src" / "predictor.py").write_text(SYNTH_PREDICTOR)
    (repo / "omi.yaml").write_text(f"""\
apiVersion: omibuild/v1
name: synthetic-1g
model:
  source: {{local: {{path: model}}}}
  flavor: custom
  predictor: predictor:Echo
code: {{path: src}}
runtimes:
  interfaces: {{kfserving: {{protocols: [v1]}}}}
image:
  repository: {REGISTRY}/bench/synthetic-1g
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


# -- serving ----------------------------------------------------------------------------------


def wait_http(url: str, timeout: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} never became ready")


def ab(url: str, body: Path, n: int, c: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as csv:
        out = run(
            [
                "taskset",
                "-c",
                "1",
                "ab",
                "-q",
                "-k",
                "-n",
                str(n),
                "-c",
                str(c),
                "-p",
                str(body),
                "-T",
                "application/json",
                "-e",
                csv.name,
                url,
            ],
            timeout=600,
        ).stdout
        failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
        if failed or non2xx:
            raise RuntimeError(f"ab saw failures against {url}:\n{out}")
        rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        pct = dict(line.split(",") for line in Path(csv.name).read_text().splitlines()[1:])
    return {"rps": rps, "p50_ms": float(pct["50"]), "p99_ms": float(pct["99"])}


def grpc_load(target: str, model: str, n: int, c: int) -> dict[str, float]:
    out = run(
        [
            "taskset",
            "-c",
            "1",
            PY,
            str(ROOT / "bench/grpc_load.py"),
            target,
            model,
            str(n),
            str(c),
            str(ROOT),
        ],
        timeout=600,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def build_mlserver(work: Path) -> str:
    import sklearn

    ctx = work / "mlserver"
    shutil.copytree(ROOT / "bench/mlserver", ctx)
    shutil.copy(ROOT / "examples/manifests/sklearn-iris/model/model.joblib", ctx / "model.joblib")
    ref = "omibuild-bench/mlserver:latest"
    log("building the MLServer image (same base, same model)")
    docker_build(ctx, ref, "--build-arg", f"SKLEARN_VERSION={sklearn.__version__}")
    return ref


def bench_serving(work: Path, reps: int, requests: int) -> None:
    ours = ensure_iris(work)
    theirs = build_mlserver(work)
    body = work / "v2.json"
    body.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [1, 4],
                        "datatype": "FP64",
                        "data": [5.1, 3.5, 1.4, 0.2],
                    }
                ]
            }
        )
    )
    servers = {
        "omibuild": (ours, {"INTERFACE": "kfserving", "PROTOCOL": "v2"}, "iris-classifier", ()),
        "mlserver": (theirs, {}, "iris", ()),
        "floor": (
            ours,
            {},
            "iris",
            (
                "--entrypoint",
                "/opt/omi/venv/bin/python",
                "-v",
                f"{ROOT / 'bench/floor.py'}:/floor.py:ro",
                "-v",
                f"{ROOT / 'examples/manifests/sklearn-iris/model'}:/m:ro",
                "/floor.py /m/model.joblib",
            ),
        ),
    }
    # Repetitions interleave the servers (ours, MLServer, floor, ours, ...), so a drift in the
    # machine's speed during the run lands on every server alike instead of on one of them.
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in servers}
    for _ in range(reps):
        for name, (image, env, model, extra) in servers.items():
            with _start(image, env, extra) as addr:
                wait_http(f"http://{addr[8080]}/v2/health/ready")
                url = f"http://{addr[8080]}/v2/models/{model}/infer"
                ab(url, body, 200, 4)  # warm up
                for c in (1, 32):
                    results[name].setdefault(f"rest c={c}", []).append(ab(url, body, requests, c))
                    results[name].setdefault(f"grpc c={c}", []).append(
                        grpc_load(addr[8081], model, requests, c)
                    )
    for key in results["omibuild"]:
        ours_rps = [r["rps"] for r in results["omibuild"][key]]
        base_rps = [r["rps"] for r in results["mlserver"][key]]
        record(
            "serving",
            f"{key}: requests/s, omibuild vs MLServer",
            ours_rps,
            "req/s",
            baseline=base_rps,
            baseline_name="MLServer",
            target="≥ 2x",
            check=lambda v, r: r is not None and r >= 2,
        )
        for q in ("p50_ms", "p99_ms"):
            target = "≤ 0.5x" if q == "p99_ms" else ""
            record(
                "serving",
                f"{key}: {q[:3]} latency, omibuild vs MLServer",
                [r[q] for r in results["omibuild"][key]],
                "ms",
                baseline=[r[q] for r in results["mlserver"][key]],
                baseline_name="MLServer",
                target=target,
                check=(lambda v, r: r is not None and r <= 0.5) if target else None,
            )
        floor = "bare grpcio server" if key.startswith("grpc") else "bare Starlette endpoint"
        record(
            "serving",
            f"{key}: requests/s, omibuild vs the {floor} floor",
            ours_rps,
            "req/s",
            baseline=[r["rps"] for r in results["floor"][key]],
            baseline_name=f"{floor}, predict inline",
        )
    cold: dict[str, list[float]] = {"omibuild": [], "mlserver": [], "floor": []}
    for _ in range(reps + 2):
        for name in cold:
            image, env, model, extra = servers[name]
            start = time.perf_counter()
            with _start(image, env, extra) as addr:
                wait_http(f"http://{addr[8080]}/v2/models/{model}/ready")
                cold[name].append(time.perf_counter() - start)
    record(
        "cold start",
        "container start to ready, omibuild vs MLServer",
        cold["omibuild"],
        "s",
        baseline=cold["mlserver"],
        baseline_name="MLServer",
        target="≤ 0.5x",
        check=lambda v, r: r is not None and r <= 0.5,
    )
    record(
        "cold start",
        "container start to ready, omibuild vs the bare floor (imports, model load, listen)",
        cold["omibuild"],
        "s",
        baseline=cold["floor"],
        baseline_name="bench/floor.py",
    )


@contextlib.contextmanager
def _start(image: str, env: dict[str, str], extra: tuple[str, ...]) -> Iterator[dict[int, str]]:
    """Start a server on core 0 and yield its addresses on the bridge network (port -> host:port).

    Clients connect to the container's own address, as a pod's clients do, not through a
    published port: docker-proxy would relay every byte through an unpinned userspace process,
    adding about 0.2 ms per request to both servers and a core's worth of noise."""
    cmd = ["docker", "run", "-d", "--rm", f"--cpus={CPUS}", "--cpuset-cpus=0"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    args = list(extra)
    tail: list[str] = []
    if args and " " in args[-1]:
        tail = args.pop().split()
    cid = run([*cmd, *args, image, *tail]).stdout.strip()
    try:
        ip = run(
            [
                "docker",
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                cid,
            ]
        ).stdout.strip()
        if not ip:
            raise RuntimeError(f"container {cid[:12]} has no bridge address")
        yield {p: f"{ip}:{p}" for p in (8080, 8081)}
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def bench_soak(work: Path, seconds: float) -> None:
    """c=32 for `seconds` (10 minutes by default), 10% invalid requests, one core."""
    from soak import soak

    image = ensure_iris(work)
    with _start(image, {"INTERFACE": "kfserving", "PROTOCOL": "v2"}, ("--memory=1g",)) as addr:
        cid = run(["docker", "ps", "-q", "--filter", f"ancestor={image}"]).stdout.split()[0]
        wait_http(f"http://{addr[8080]}/v2/health/ready")
        log(f"soak: {seconds:.0f} s at c=32, 10% invalid requests")
        r = soak(addr[8080], cid, "/v2/models/iris-classifier/infer", seconds)
    minutes = f"{r['seconds'] / 60:.0f} min"
    record(
        "soak",
        f"requests answered wrongly ({int(r['requests'])} in {minutes})",
        [r["wrong"]],
        "requests",
        target="0",
        check=lambda v, _: v == 0,
    )
    record(
        "soak",
        "p99 of the last minute vs the first",
        [r["p99_last_ms"]],
        "ms",
        baseline=[r["p99_first_ms"]],
        baseline_name="first minute's p99",
        target="<= 1.10x",
        check=lambda _, ratio: ratio is not None and ratio <= 1.10,
    )
    record(
        "soak",
        "memory at the end vs after the first minute",
        [r["memory_last_mb"]],
        "MB",
        baseline=[r["memory_first_mb"]],
        baseline_name="after the first minute",
        target="< 1.05x",
        check=lambda _, ratio: ratio is not None and ratio < 1.05,
    )


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def version(cmd: list[str]) -> str:
        try:
            return run(cmd).stdout.strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError):
            return "n/a"

    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    sys.path.insert(0, str(ROOT))
    from omibuild import __version__

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem) / 1e6:.1f} GB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
        "buildx": version(["docker", "buildx", "version"]),
        "omibuild": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def keep_previous(groups_rerun: set[str]) -> None:
    """With --only, keep the figures of the groups not re-run from the last report."""
    try:
        previous = json.loads((RESULTS / "latest.json").read_text())["figures"]
    except (OSError, ValueError, KeyError):
        return
    prefixes = {
        "cli": "cli",
        "hashing": "hashing",
        "build": "build:",
        "layers": "model layers:",
        "size": "image size",
        "formats": "formats",
        "serving": ("serving", "cold start"),
        "analysis": "explain and drift",
        "soak": "soak",
    }
    rerun = tuple(
        p
        for g in groups_rerun
        for p in (prefixes[g] if isinstance(prefixes[g], tuple) else (prefixes[g],))
    )
    kept = [f for f in previous if not f["group"].startswith(rerun)]
    for f in kept:
        f.pop("ratio", None)
    FIGURES[:0] = [Figure(**f) for f in kept]


def write_report(info: dict[str, str], seconds: float, rerun: set[str] | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "seconds": round(seconds, 1),
        "figures": [{**asdict(f), "ratio": f.ratio} for f in FIGURES],
    }
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# omibuild benchmarks",
        "",
        (
            f"`make bench` on {info['date']}, {seconds / 60:.1f} min"
            + (
                f" (re-ran only: {', '.join(sorted(rerun))}; the other rows are from the previous "
                "run)"
                if rerun
                else ""
            )
            + ". Medians of repeated runs; ratios are against a baseline measured side by side "
            "in the same run; spread is (max - min) / median."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "| group | measure | value | baseline | ratio | spread | target | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in FIGURES:
        base = f"{f.baseline:.4g} {f.unit} ({f.baseline_name})" if f.baseline else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio else ""
        holds = "" if f.holds is None else ("yes" if f.holds else "**no**")
        lines.append(
            f"| {f.group} | {f.name} | {f.value:.4g} {f.unit} | {base} | {ratio} | "
            f"{f.spread:.0%} | {f.target} | {holds} |"
        )
    if FAILURES:
        lines += ["", "## Groups that failed in this run", ""]
        lines += [f"- `{f.splitlines()[0]}`" for f in FAILURES]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")


def bench_layers(work: Path, sizes: str, reps: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from model_layers import bench_model_layers

    for gib in (int(x) for x in sizes.split(",") if x.strip()):
        bench_model_layers(
            work,
            gib << 30,
            reps if gib < 10 else 1,
            base=BASE,
            registry=REGISTRY,
            py=PY,
            record=record,
            log=log,
        )


def bench_explain_drift(work: Path, reps: int, requests: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from analysis import bench_analysis

    bench_analysis(
        work,
        py=PY,
        reps=reps,
        requests=requests,
        record=record,
        log=log,
        start=_start,
        ab=ab,
        wait_http=wait_http,
    )


def bench_image_formats(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from formats import bench_formats

    bench_formats(
        work,
        py=PY,
        base=BASE,
        record=record,
        log=log,
        docker_build=docker_build,
        omibuild=omibuild,
    )


def bench_files(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from many_files import bench_many_files

    bench_many_files(work, record=record, log=log, omibuild=omibuild)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument(
        "--only",
        choices=[
            "cli",
            "hashing",
            "build",
            "layers",
            "files",
            "size",
            "formats",
            "serving",
            "analysis",
            "soak",
        ],
        action="append",
    )
    parser.add_argument(
        "--layer-sizes",
        default=os.environ.get("OMI_BENCH_LAYER_SIZES", "1,10"),
        help="model sizes in GiB for the layers group (10 GiB runs once)",
    )
    args = parser.parse_args()
    only = set(
        args.only
        or [
            "cli",
            "hashing",
            "build",
            "layers",
            "files",
            "size",
            "formats",
            "serving",
            "analysis",
            "soak",
        ]
    )
    start = time.perf_counter()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="omibuild-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        weights = work / "weights-1g.bin"
        if only & {"hashing", "build"}:
            log("writing a 1 GiB synthetic model")
            write_random(weights, 1 << 30)
        groups: list[tuple[str, Callable[[], None]]] = [
            ("cli", lambda: bench_cli(max(args.reps, 7))),
            ("hashing", lambda: bench_hashing(work, weights, args.reps)),
            ("build", lambda: bench_builds(work, weights, args.reps)),
            ("layers", lambda: bench_layers(work, args.layer_sizes, args.reps)),
            ("files", lambda: bench_files(work)),
            ("size", lambda: bench_size(work)),
            ("formats", lambda: bench_image_formats(work)),
            ("serving", lambda: bench_serving(work, max(args.reps, 5), args.requests)),
            ("analysis", lambda: bench_explain_drift(work, args.reps, args.requests)),
            ("soak", lambda: bench_soak(work, args.soak_seconds)),
        ]
        for name, fn in groups:
            if name not in only:
                continue
            try:
                fn()
            except Exception as exc:  # report the group as failed, keep the others
                FAILURES.append(f"{name}: {type(exc).__name__}: {str(exc)[-1500:]}")
                log(f"group {name} FAILED: {str(exc)[-1500:]}")
    remove_bench_images()
    if args.only:
        keep_previous(only)
    write_report(info, time.perf_counter() - start, only if args.only else None)
    log(f"wrote {RESULTS / 'latest.md'} in {(time.perf_counter() - start) / 60:.1f} min")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
