"""`omibuild apply` on the real engine and registry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import docker
from .helpers import copy_example, image_json, omibuild

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("example_models")]


@pytest.fixture
def repo(
    tmp_path: Path, registry: str, unique: str, image_cleanup: list[str], cache_dir: Path
) -> Path:
    repository = f"{registry}/omibuild-test/iris-{unique}"
    image_cleanup += [f"{repository}:latest"]
    return copy_example("sklearn-iris", tmp_path, repository)


def _apply(manifest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = omibuild("apply", str(manifest), "--progress", "plain", *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _plan(manifest: Path) -> dict:  # type: ignore[type-arg]
    proc = omibuild("plan", str(manifest), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_labels_annotations_and_origin_tag(repo: Path, image_cleanup: list[str]) -> None:
    plan = _plan(repo)
    refs = [f"{plan['repository']}:{t}" for t in plan["tags"]]
    image_cleanup += refs
    _apply(repo, "--push")
    origin_tag = plan["tags"][0]
    assert origin_tag.startswith("sha256-") and origin_tag[7:] == plan["model_digest"][7:]
    docker("pull", "-q", refs[0])
    labels = image_json(refs[0])["Config"]["Labels"]
    assert json.loads(labels["ml.openmodel.interfaces"]) == ["kfserving", "modzy"]
    assert json.loads(labels["ml.openmodel.protocols"]) == [["v1", "v2"], ["v2"]]
    assert int(labels["ml.openmodel.port"]) == 8080
    assert json.loads(labels["ml.openml.model_name"]) == "iris-classifier"
    assert json.loads(labels["io.omibuild.extensions"]) == ["sagemaker", "vertex", "mlflow"]
    assert labels["io.omibuild.origin.source"] == "local"
    assert labels["io.omibuild.origin.id"] == plan["model_digest"]
    assert labels["io.omibuild.model.digest"] == plan["model_digest"]
    assert labels["io.omibuild.plan.digest"] == plan["digest"]
    for key in ("title", "version", "base.name", "base.digest"):
        assert labels[f"org.opencontainers.image.{key}"], key
    raw = docker("buildx", "imagetools", "inspect", "--raw", refs[1]).stdout
    index = json.loads(raw)
    assert index["annotations"]["io.omibuild.plan.digest"] == plan["digest"]
    assert index["annotations"]["ml.openmodel.interfaces"] == '["kfserving","modzy"]'
    manifest_digest = index["manifests"][0]["digest"]
    repo_name = refs[1].rsplit(":", 1)[0]
    image_manifest = json.loads(
        docker("buildx", "imagetools", "inspect", "--raw", f"{repo_name}@{manifest_digest}").stdout
    )
    assert image_manifest["annotations"]["io.omibuild.origin.id"] == plan["model_digest"]
    config = image_json(refs[0])["Config"]
    assert config["User"] == "10001:10001"


def test_push_and_pull_back(repo: Path, image_cleanup: list[str]) -> None:
    plan = _plan(repo)
    ref = f"{plan['repository']}:latest"
    image_cleanup.append(f"{plan['repository']}:{plan['tags'][0]}")
    _apply(repo, "--push")
    docker("image", "rm", "-f", ref, f"{plan['repository']}:{plan['tags'][0]}", check=False)
    docker("pull", "-q", ref)
    assert image_json(ref)["Config"]["Labels"]["io.omibuild.plan.digest"] == plan["digest"]
    # pushing the same plan again is a no-op: the registry already has it
    assert "up to date" in _apply(repo, "--push").stdout


def _layers(ref: str) -> list[str]:
    return image_json(ref)["RootFS"]["Layers"]  # type: ignore[no-any-return]


def test_model_only_and_code_only_changes(
    tmp_path: Path, registry: str, unique: str, image_cleanup: list[str], cache_dir: Path
) -> None:
    repository = f"{registry}/omibuild-test/hooks-{unique}"
    manifest = copy_example("custom-hooks", tmp_path, repository)

    def build() -> tuple[dict, list[str]]:  # type: ignore[type-arg]
        plan = _plan(manifest)
        ref = f"{repository}:{plan['tags'][0]}"  # the origin tag follows the model
        image_cleanup.append(ref)
        _apply(manifest)
        return plan, _layers(ref)

    plan1, first = build()
    model_layers = _model_layer_indexes(plan1)
    # model-only change: the model layer changes; the venv and code layers keep their digests
    (manifest.parent / "model" / "extra.txt").write_text(f"model change {unique}\n")
    plan2, second = build()
    assert plan2["model_digest"] != plan1["model_digest"]
    assert len(first) == len(second)
    changed = {i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b}
    # omi.json and the plan's state name the model's files; the last layer is outputs.json:
    # the model answers as before
    omi_json_layer, state_layer = min(model_layers) - 2, min(model_layers) - 1
    assert changed & model_layers, (changed, model_layers)
    assert changed <= {*model_layers, omi_json_layer, state_layer}, (changed, model_layers)
    # code-only change: the model layer keeps its digest
    hooks = manifest.parent / "src" / "hooks.py"
    hooks.write_text(hooks.read_text() + f"\n# code change {unique}\n")
    plan3, third = build()
    assert plan3["model_digest"] == plan2["model_digest"]
    assert all(third[i] == second[i] for i in model_layers)
    assert third[len(_layers_of_base()) + 1] == second[len(_layers_of_base()) + 1]  # the venv
    assert third != second


def _layers_of_base() -> list[str]:
    from .conftest import BASE_IMAGE

    return _layers(BASE_IMAGE)


def _model_layer_indexes(plan: dict) -> set[int]:  # type: ignore[type-arg]
    """Positions of the model layers in the final image: after what BuildKit built (the base,
    user, venv, runtime, code, omi.json and plan-state layers), before outputs.json."""
    base = len(_layers_of_base())
    return {base + 6 + i for i in range(len(plan["model_layers"]))}


def test_noop_apply_performs_no_build(repo: Path, image_cleanup: list[str]) -> None:
    plan = _plan(repo)
    image_cleanup.append(f"{plan['repository']}:{plan['tags'][0]}")
    _apply(repo)
    image_id = image_json(f"{plan['repository']}:latest")["Id"]
    again = _apply(repo)
    assert "up to date" in again.stdout
    assert "#1 " not in again.stdout + again.stderr  # buildx never ran
    assert image_json(f"{plan['repository']}:latest")["Id"] == image_id


def test_secrets_never_reach_the_image(
    repo: Path, tmp_path: Path, unique: str, image_cleanup: list[str], cache_dir: Path
) -> None:
    token = f"omibuild-fake-token-{unique}"
    marker = f"omibuild-fake-ca-{unique}"
    real_ca = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    fake_ca = tmp_path / "fake-ca.pem"
    fake_ca.write_text(f"# {marker}\n{real_ca}")  # still a valid bundle for pip
    # no cache export: the step's layers would only be written to a directory and dropped
    text = repo.read_text() + (
        "build:\n  cache: {enabled: false}\n  secrets:\n    - {id: token, env: OMI_TEST_TOKEN}\n"
    )
    repo.write_text(text)
    # a requirement no earlier build had forces the dependency step (where secrets are
    # mounted) to run
    (repo.parent / "model" / "requirements.txt").write_text(
        (repo.parent / "model" / "requirements.txt").read_text()
        + f"six!=0.0.{int(unique, 16) % 10**9}\n"
    )
    plan = _plan(repo)
    refs = [f"{plan['repository']}:{t}" for t in plan["tags"]]
    image_cleanup += refs
    proc = omibuild(
        "apply",
        str(repo),
        "--progress",
        "plain",
        env={"OMI_TEST_TOKEN": token, "PIP_CERT": str(fake_ca)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(
        r"#(\d+) \[deps \d/\d\] RUN --mount=type=cache.*\n#\1 \d", proc.stdout + proc.stderr
    ), "the dependency step did not run"
    assert token not in proc.stdout + proc.stderr
    saved = tmp_path / "image.tar"
    docker("image", "save", "-o", str(saved), refs[0])
    found = _scan_tar(saved, [token.encode(), marker.encode()])
    assert found == [], found
    history = docker("history", "--no-trunc", refs[0]).stdout
    inspect = docker("image", "inspect", refs[0]).stdout
    for secret in (token, marker, str(fake_ca)):
        assert secret not in history and secret not in inspect


def _scan_tar(path: Path, needles: list[bytes]) -> list[str]:
    """Every layer blob of a saved image, decompressed, searched for the needles."""
    import gzip
    import io

    hits = []
    with tarfile.open(path) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            elif data[:4] == b"\x28\xb5\x2f\xfd":
                import zstandard  # type: ignore[import-not-found]

                data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            for needle in needles:
                if needle in data:
                    hits.append(f"{member.name}: {needle!r}")
            if data[257:262] == b"ustar":
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for f in layer.getmembers():
                        if f.isfile() and f.size < 64 << 20:
                            content = layer.extractfile(f).read()  # type: ignore[union-attr]
                            hits += [
                                f"{member.name}:{f.name}: {n!r}" for n in needles if n in content
                            ]
    return hits


def test_stale_reviewed_plan_is_refused(repo: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    proc = omibuild("plan", str(repo), "--out", str(plan_file), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (repo.parent / "model" / "extra.txt").write_text("changed after review\n")
    proc = omibuild("apply", str(repo), "--plan", str(plan_file))
    assert proc.returncode == 1
    assert "is stale" in proc.stderr and "the model changed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_manifests_build_together(
    tmp_path: Path, registry: str, unique: str, image_cleanup: list[str], cache_dir: Path
) -> None:
    a = copy_example("sklearn-iris", tmp_path / "a", f"{registry}/omibuild-test/a-{unique}")
    b = copy_example("onnx-linear", tmp_path / "b", f"{registry}/omibuild-test/b-{unique}")
    refs = []
    for m in (a, b):
        plan = _plan(m)
        refs += [f"{plan['repository']}:{t}" for t in plan["tags"]]
    image_cleanup += refs
    proc = omibuild("apply", str(a), str(b), "--progress", "plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ref in refs:
        assert image_json(ref)["Config"]["Labels"]["io.omibuild.plan.digest"]
    assert proc.stdout.count("built") >= 2
    shutil.rmtree(tmp_path / "a")


def test_two_builds_sharing_a_cache_directory_take_turns(
    tmp_path: Path, registry: str, unique: str, image_cleanup: list[str], cache_dir: Path
) -> None:
    """Two applies asked to export one local cache directory; BuildKit's exporter fails ("not
    found") when they overlap, so the second waits for the first."""
    shared = tmp_path / "shared-cache"  # a private directory, empty: both export every layer
    manifests = []
    for side in ("a", "b"):
        repository = f"{registry}/omibuild-test/turns-{side}-{unique}"
        manifest = copy_example("sklearn-iris", tmp_path / side, repository)
        plan = _plan(manifest)
        image_cleanup.extend(f"{plan['repository']}:{t}" for t in plan["tags"])
        manifests.append(manifest)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "omibuild", "apply", str(m), "--progress", "plain",
             "--cache-to", f"type=local,dest={shared},mode=max"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in manifests
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    assert any("waiting for another build using the cache" in o + e for o, e in outputs)
