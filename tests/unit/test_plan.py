"""The planner and the renderer: golden files, determinism, injection, change isolation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from omibuild.manifest.model import Manifest
from omibuild.manifest.validate import load_manifest, validate_file
from omibuild.planning.inputs import gather
from omibuild.planning.make import make_plan
from omibuild.planning.plan import BuildInputs, Plan
from omibuild.progress import QUIET
from omibuild.render.dockerfile import render
from omibuild.render.quoting import UnsafeValue
from omibuild.sources.base import ModelFile, ResolvedSource
from omibuild.sources.resolve import resolve
from omibuild.store.cache import Cache
from tests.conftest import ROOT, example_manifests

pytestmark = pytest.mark.usefixtures("example_models")  # reads examples/

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def canonical_source(m: Manifest) -> ResolvedSource:
    """A fixed resolution per example, so goldens do not depend on library versions."""
    seed = hashlib.sha256(m.name.encode()).hexdigest()
    files = (ModelFile("model.bin", 1234, seed), ModelFile("requirements.txt", 20, seed[::-1]))
    ids = {"local": f"sha256:{seed}", "mlflow": seed[:32], "huggingface": seed[:40]}
    return ResolvedSource(
        kind=m.source.kind,
        uri=f"{m.source.kind}:{m.name}",
        origin_id=ids[m.source.kind],
        version="7",
        files=files,
        metadata=(("example", m.name),),
        requirements=("scikit-learn==1.5.2",),
    )


def canonical_inputs(m: Manifest, cache: Cache) -> BuildInputs:
    inputs = gather(m, canonical_source(m), cache, env={})
    return dataclasses.replace(
        inputs,
        git_url=None,
        git_revision=None,
        base_digest="sha256:" + "b" * 64,
        runtime_digest="sha256:" + "0" * 64,
    )


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.mark.parametrize("path", example_manifests(), ids=lambda p: p.parent.name)
def test_golden_dockerfile_and_plan(path: Path, cache: Cache) -> None:
    m = load_manifest(path, env={"OMIBUILD_BASE_IMAGE": "omibuild.local/python:3.11-slim"})
    plan = make_plan(canonical_inputs(m, cache))
    dockerfile = render(plan)
    plan_json = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
    name = path.parent.name
    if UPDATE:
        (GOLDEN / f"{name}.Dockerfile").write_text(dockerfile)
        (GOLDEN / f"{name}.plan.json").write_text(plan_json)
    assert dockerfile == (GOLDEN / f"{name}.Dockerfile").read_text(), (
        "run UPDATE_GOLDEN=1 make test-unit"
    )
    assert plan_json == (GOLDEN / f"{name}.plan.json").read_text()
    assert Plan.from_dict(json.loads(plan_json)) == plan  # round trip for apply --plan


def test_plans_are_deterministic_across_directories_and_environments(tmp_path: Path) -> None:
    src = ROOT / "examples" / "manifests" / "custom-hooks"
    digests, dockerfiles = set(), set()
    for i, env in enumerate(({"A": "1", "B": "2"}, {"B": "2", "A": "1", "PWD": "/elsewhere"})):
        repo = tmp_path / f"copy{i}" / "deep" / "repo"
        shutil.copytree(src, repo, ignore=shutil.ignore_patterns("omi.lock"))
        m = load_manifest(repo / "omi.yaml", env=env)
        cache = Cache(tmp_path / f"cache{i}")
        resolved = resolve(m, cache, QUIET, update_lock=False)
        inputs = dataclasses.replace(
            gather(m, resolved, cache, env=env), git_url=None, git_revision=None
        )
        plan = make_plan(inputs)
        digests.add(plan.digest)
        dockerfiles.add(render(plan))
        assert make_plan(inputs) == plan  # same inputs, same plan
    assert len(digests) == 1 and len(dockerfiles) == 1


def test_source_date_epoch_sets_created_and_changes_the_digest(cache: Cache) -> None:
    m = load_manifest(example_manifests()[0], env={})
    plain = canonical_inputs(m, cache)
    dated = dataclasses.replace(plain, source_date_epoch=1700000000)
    a, b = make_plan(plain), make_plan(dated)
    assert "org.opencontainers.image.created" not in dict(a.labels)
    assert dict(b.labels)["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert a.digest != b.digest


def _stages(dockerfile: str) -> dict[str, str]:
    """deps, code, describe and final stages; final split into model COPYs and the rest."""
    _header, deps, code, *describe, final_stage = dockerfile.split("\n\nFROM ")
    out = {"deps": deps, "code": code, "describe": "".join(describe)}
    final = final_stage.splitlines()
    out["model"] = "\n".join(ln for ln in final if ln.startswith("COPY --link model/"))
    out["final-rest"] = "\n".join(ln for ln in final if not ln.startswith("COPY --link model/"))
    return out


def test_model_change_touches_only_the_model_stage(cache: Cache) -> None:
    m = load_manifest(ROOT / "examples/manifests/custom-hooks/omi.yaml", env={})
    base = canonical_inputs(m, cache)
    changed_files = (*base.source.files, ModelFile("weights-2.bin", 99, "c" * 64))
    other = dataclasses.replace(base, source=dataclasses.replace(base.source, files=changed_files))
    p1, p2 = make_plan(base), make_plan(other)
    s1, s2 = _stages(render(p1)), _stages(render(p2))
    assert s1["deps"] == s2["deps"] and s1["code"] == s2["code"]
    assert p1.model_layers != p2.model_layers and p1.code_files == p2.code_files
    assert p1.digest != p2.digest
    changed_labels = {k for k, v in set(p1.labels) ^ set(p2.labels)}
    assert changed_labels == {
        "io.omibuild.model.digest",
        "io.omibuild.plan.digest",
        "io.omibuild.plan.state",
    }


def test_code_change_leaves_the_model_stage_untouched(cache: Cache) -> None:
    m = load_manifest(ROOT / "examples/manifests/custom-hooks/omi.yaml", env={})
    base = canonical_inputs(m, cache)
    other = dataclasses.replace(base, code=(*base.code, ModelFile("new_helper.py", 10, "d" * 64)))
    p1, p2 = make_plan(base), make_plan(other)
    s1, s2 = _stages(render(p1)), _stages(render(p2))
    assert p1.model_layers == p2.model_layers and s1["model"] == s2["model"]
    assert s1["deps"] == s2["deps"]
    assert p1.digest != p2.digest


def test_large_models_are_split_into_layers(cache: Cache) -> None:
    m = load_manifest(example_manifests()[0], env={})
    inputs = canonical_inputs(m, cache)
    big = tuple(ModelFile(f"shard-{i}.bin", 300 << 20, f"{i:064x}") for i in range(4))
    plan = make_plan(
        dataclasses.replace(inputs, source=dataclasses.replace(inputs.source, files=big))
    )
    assert [len(layer.files) for layer in plan.model_layers] == [1, 1, 1, 1]
    # omibuild makes the model layers itself: the Dockerfile BuildKit builds never names them
    copies = [
        ln for ln in render(plan).splitlines() if "/models" in ln and not ln.startswith("ENV")
    ]
    assert plan.dry_run and copies == []


INJECTIONS = [
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    '"; touch /tmp/pwned; echo "',
    "\\\\$HOME",
    "${PATH}",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_env_and_label_values_cannot_inject(value: str, cache: Cache) -> None:
    m = load_manifest(example_manifests()[0], env={})
    m = dataclasses.replace(
        m,
        image=dataclasses.replace(
            m.image, env=(("EVIL", value),), labels=(("org.example.evil", value),)
        ),
    )
    text = render(make_plan(canonical_inputs(m, cache)))
    baseline = render(
        make_plan(canonical_inputs(load_manifest(example_manifests()[0], env={}), cache))
    )
    instructions = [
        ln.split(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith(" ")
    ]
    base_instr = [
        ln.split(" ", 1)[0] for ln in baseline.splitlines() if ln and not ln.startswith(" ")
    ]
    assert instructions.count("RUN") == base_instr.count("RUN")
    env_line = next(ln for ln in text.splitlines() if ln.startswith("ENV EVIL="))
    inner = env_line[len("ENV EVIL=") :]
    assert inner.startswith('"') and inner.endswith('"')
    body = inner[1:-1]
    assert "$" not in body.replace("\\$", "")  # every $ is escaped: no expansion
    assert '"' not in body.replace('\\"', "")  # no unescaped quote ends the word early


@pytest.mark.parametrize("value", ["line\nRUN touch /tmp/pwned", "a\rb", "x\x00y"])
def test_control_characters_are_rejected_twice(value: str, cache: Cache, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(
        ROOT / "examples/manifests/sklearn-iris", repo, ignore=shutil.ignore_patterns("omi.lock")
    )
    text = (
        (repo / "omi.yaml")
        .read_text()
        .replace("image:\n", f"image:\n  env: {{EVIL: {json.dumps(value)}}}\n", 1)
    )
    (repo / "omi.yaml").write_text(text)
    result = validate_file(repo / "omi.yaml", env={})
    assert any("control characters" in i.message for i in result.issues), result.issues
    # and the renderer refuses on its own, should a plan reach it some other way
    m = load_manifest(example_manifests()[0], env={})
    m = dataclasses.replace(m, image=dataclasses.replace(m.image, env=(("EVIL", value),)))
    with pytest.raises(UnsafeValue):
        render(make_plan(canonical_inputs(m, cache)))


def test_names_that_could_inject_are_rejected_at_validation(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(
        ROOT / "examples/manifests/sklearn-iris", repo, ignore=shutil.ignore_patterns("omi.lock")
    )
    for name in ("$(touch /tmp/pwned)", "a\\nRUN x", "x; rm -rf /"):
        text = (repo / "omi.yaml").read_text()
        (repo / "omi.yaml").write_text(
            text.replace("name: iris-classifier", f"name: {json.dumps(name)}", 1)
        )
        issues = validate_file(repo / "omi.yaml", env={}).issues
        assert any(i.path == "$.name" for i in issues), name
        (repo / "omi.yaml").write_text(text)


def test_slim_is_a_deps_stage_step_that_can_be_turned_off(cache: Cache, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(
        ROOT / "examples/manifests/sklearn-iris", repo, ignore=shutil.ignore_patterns("omi.lock")
    )
    slim = make_plan(canonical_inputs(load_manifest(repo / "omi.yaml", env={}), cache))
    text = (repo / "omi.yaml").read_text().replace("image:\n", "image:\n  slim: false\n", 1)
    (repo / "omi.yaml").write_text(text)
    assert not validate_file(repo / "omi.yaml", env={}).issues
    full = make_plan(canonical_inputs(load_manifest(repo / "omi.yaml", env={}), cache))
    assert slim.slim and not full.slim and slim.digest != full.digest
    deps, final = render(slim).split("\nFROM deps AS code")[0], render(slim).split("\n\n")[-1]
    assert "omi-slim.py --pip-report /tmp/omi-pip-report.json /opt/omi/venv" in deps
    assert "omi-slim" not in final
    # without slimming, the script only records what the venv holds (for the SBOM)
    assert "omi-slim.py --no-slim --pip-report" in render(full)


def test_the_source_label_names_only_a_remote_others_can_reach() -> None:
    from omibuild.planning.inputs import public_source

    assert public_source("https://github.com/org/model.git") == "https://github.com/org/model.git"
    assert public_source("git@github.com:org/model.git") == "git@github.com:org/model.git"
    assert public_source("https://user:token@host/org/model") == "https://***@host/org/model"
    for local in ("/home/me/model", "file:///home/me/model", "../model", None):
        assert public_source(local) is None


def test_files_omibuild_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from omibuild.store.cache import atomic_write

    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "omi.lock", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "omi.lock").stat().st_mode) == 0o644
