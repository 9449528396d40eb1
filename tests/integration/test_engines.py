"""Builds beyond one machine, on a second Docker engine started here (scripts/start-engine2.sh:
its own data root, containerd, image store and build cache; the docker context
omibuild-engine2). A CI runner starts empty: a registry cache written by one engine lets
another rebuild the same plan without running a step. A shared remote builder: `apply
--builder` builds there, several manifests in one bake, and pushes."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import docker
from tests.integration.test_first_model import cli, committed_repo, new_repo, train_joblib

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("engine2")]

CONTEXT = "omibuild-engine2"
SOCKET = "/run/omibuild-engine2/docker.sock"
CONTAINERD = {  # each engine's own containerd, to read an image's index from its store
    "engine1": "/var/run/docker/containerd/containerd.sock",
    "engine2": "/run/omibuild-engine2/exec/containerd/containerd.sock",
}


def on_engine2(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", f"unix://{SOCKET}", *args], capture_output=True, text=True, check=check
    )


@pytest.fixture(scope="module")
def engine2(engine: None) -> Iterator[None]:
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start-engine2.sh")], capture_output=True, text=True
    )
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    empty_build_cache()  # what the tests built there (about 1.2 GB) goes with them


def empty_build_cache() -> None:
    """The second engine as a fresh CI runner finds it: no build cache, no images but the base."""
    on_engine2("builder", "prune", "-af")
    images = on_engine2("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for ref in images:
        if not ref.startswith("omibuild.local/python:"):
            on_engine2("image", "rm", "-f", ref, check=False)


def platform_manifest(engine: str, index: str) -> str:
    """The digest of the image's own manifest, inside its index (which also holds BuildKit's
    provenance attestation: that records build times, so it differs from build to build)."""
    out = subprocess.run(
        ["ctr", "-a", CONTAINERD[engine], "-n", "moby", "content", "get", index],
        capture_output=True,
        check=True,
    ).stdout
    [image] = [
        m
        for m in json.loads(out)["manifests"]
        if (m.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    return str(image["digest"])


LOGS: list[str] = []  # each apply's plain BuildKit log, for the message when a check fails


def apply_json(repo: Path, *args: str, env: dict[str, str] | None = None) -> list[dict]:  # type: ignore[type-arg]
    done = cli(repo, "apply", "--format", "json", "--progress", "plain", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    LOGS.append(done.stderr)
    return list(json.loads(done.stdout))


def ran(log: str) -> list[str]:
    """The Dockerfile steps a plain log shows running, not taken from a cache, and the
    cache export's own lines (an export that failed and was ignored leaves a cache short)."""
    cached = set(re.findall(r"^#(\d+) CACHED$", log, re.MULTILINE))
    steps = re.findall(r"^#(\d+) (\[[^\]]+ \d+/\d+\] (?!FROM ).*)$", log, re.MULTILINE)
    export = [ln for ln in log.splitlines() if "cache" in ln.lower() and "ERROR" in ln]
    return [f"#{n} {what[:120]}" for n, what in dict(steps).items() if n not in cached] + export


def served_from_registry(ref: str, model: str) -> None:
    """The pushed image, pulled into the second engine's store as a fresh node would, serves
    a prediction."""
    on_engine2("image", "rm", "-f", ref, check=False)
    on_engine2("pull", "-q", ref)
    cid = on_engine2("run", "-d", "-p", "127.0.0.1::8080", ref).stdout.strip()
    try:
        port = on_engine2("port", cid, "8080").stdout.split(":")[-1].strip()
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
        body = json.dumps({"inputs": [tensor]}).encode()
        deadline = time.monotonic() + 90
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/{model}/infer",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert json.loads(resp.read())["outputs"][0]["shape"] == [1]
                    return
            except (OSError, ValueError):
                assert time.monotonic() < deadline, on_engine2("logs", cid).stderr[-2000:]
                time.sleep(0.5)
    finally:
        on_engine2("rm", "-f", cid, check=False)


def test_a_registry_cache_lets_an_empty_engine_rebuild_without_running_a_step(
    tmp_path: Path, unique: str, registry: str, engine2: None, image_cleanup: list[str]
) -> None:
    repo = committed_repo(tmp_path, f"xengine-{unique}")
    cache = f"{registry}/omibuild-test/xcache-{unique}:main"
    [first] = apply_json(repo, "--cache-to", cache)
    image_cleanup += first["tags"]
    assert first["status"] == "built"

    empty_build_cache()
    [second] = apply_json(repo, "--cache-to", cache, env={"DOCKER_HOST": f"unix://{SOCKET}"})
    assert second["status"] == "built" and second["plan_digest"] == first["plan_digest"]
    assert second["total_steps"] >= 10
    # not one step ran (on failure: what ran on each engine, and any cache export error)
    assert second["cached_steps"] == second["total_steps"], (second, [ran(x) for x in LOGS[-2:]])
    assert platform_manifest("engine2", second["image_digest"]) == platform_manifest(
        "engine1", first["image_digest"]
    )


def test_apply_builder_bakes_several_manifests_on_another_engine_and_pushes(
    tmp_path: Path, unique: str, registry: str, engine2: None
) -> None:
    # the dependencies come from a registry cache this engine writes first: the second
    # engine's builds reach no network beyond its bridge
    seed = committed_repo(tmp_path, f"seed-{unique}")
    cache = f"{registry}/omibuild-test/bakecache-{unique}:main"
    apply_json(seed, "--cache-to", cache)
    # the export is best effort (ignore-error): a run once failed here with pip on the second
    # engine (no network) after the seed build, so say whether the cache got to the registry
    seeded = docker("buildx", "imagetools", "inspect", "--raw", cache, check=False)
    assert seeded.returncode == 0, f"the seed's cache export did not reach {cache}: {seeded.stderr}"

    root = tmp_path / f"models-{unique}"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    repositories = []
    for name in ("a", "b"):
        model = new_repo(root, name, train_joblib)
        assert cli(model, "init").returncode == 0
        repository = f"{registry}/omibuild-test/bake-{unique}-{name}"
        text = (model / "omi.yaml").read_text()
        (model / "omi.yaml").write_text(
            text.replace("image:\n", f"image:\n  repository: {repository}\n")
        )
        repositories.append(repository)
    empty_build_cache()
    done = cli(
        root, "apply", ".", "--builder", CONTEXT, "--push", "--cache-to", cache, "--format", "json"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert [r["status"] for r in results] == ["built", "built"]
    for repository, result in zip(repositories, results, strict=True):
        ref = f"{repository}:latest"
        assert any(p.startswith(ref) for p in result["pushed"]), result
        # built on the second engine: in the registry, and in neither engine's image store
        raw = docker("buildx", "imagetools", "inspect", "--raw", ref).stdout
        assert json.loads(raw)["annotations"]["io.omibuild.plan.digest"] == result["plan_digest"]
        assert docker("image", "inspect", ref, check=False).returncode != 0
    served_from_registry(f"{repositories[0]}:latest", "a")
    used = on_engine2("buildx", "du").stdout  # the second engine did the work: its cache grew
    assert "Total:" in used and not re.search(r"Total:\s+0B", used), used
    again = cli(root, "apply", ".", "--builder", CONTEXT, "--push", "--format", "json")
    assert [r["status"] for r in json.loads(again.stdout)] == ["up to date", "up to date"]
