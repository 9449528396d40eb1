"""Where pip installs from: image.index_url / extra_index_urls in the plan and the Dockerfile,
credentials kept out of both, an index on loopback reached on the host's network, and a
framework's CPU build in place of its CUDA one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from omibuild.manifest.requirements import as_cpu_build
from omibuild.manifest.validate import load_manifest, validate_file
from omibuild.planning.diff import diff_plans
from omibuild.planning.make import make_plan
from omibuild.render.dockerfile import render
from omibuild.store.cache import Cache
from tests.conftest import EXAMPLES
from tests.unit.test_plan import canonical_inputs

pytestmark = pytest.mark.usefixtures("example_models")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES / "sklearn-iris", tmp_path / "repo")
    return tmp_path / "repo" / "omi.yaml"


def _with_image(manifest: Path, lines: str) -> Path:
    manifest.write_text(manifest.read_text().replace("image:\n", f"image:\n{lines}", 1))
    return manifest


def test_an_index_url_with_credentials_is_refused_where_it_is_written(manifest: Path) -> None:
    _with_image(manifest, "  extra_index_urls: [https://me:secret@pypi.corp/simple]\n")
    result = validate_file(manifest, env={})
    [issue] = [i for i in result.issues if "credentials" in i.message]
    assert issue.path == "$.image.extra_index_urls[0]" and "PIP_EXTRA_INDEX_URL" in issue.hint


def test_indexes_are_pip_flags_in_the_plan_and_a_loopback_one_runs_on_the_host_network(
    manifest: Path, tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "c")
    before = make_plan(canonical_inputs(load_manifest(manifest), cache))
    _with_image(
        manifest,
        "  index_url: https://pypi.corp/simple\n"
        "  extra_index_urls: [http://127.0.0.1:3141/simple]\n",
    )
    after = make_plan(canonical_inputs(load_manifest(manifest), cache))
    dockerfile = render(after)
    assert (
        "--index-url https://pypi.corp/simple --extra-index-url http://127.0.0.1:3141/simple "
        in dockerfile
    )
    assert "RUN --network=host --mount=type=cache,target=/root/.cache/pip" in dockerfile
    assert after.options.host_network and after.digest != before.digest
    deps = next(s for s in diff_plans(before, after, "before").stages if s.stage == "deps")
    assert deps.rebuilt and {"index_url changed", "extra_index_urls changed"} <= set(deps.reasons)
    assert "--network=host" not in render(before)


def test_a_loopback_index_from_the_user_s_environment_changes_how_not_what(
    manifest: Path, tmp_path: Path
) -> None:
    """PIP_EXTRA_INDEX_URL reaches pip as a secret: the plan (its digest) stays the same, the
    step runs on the host's network."""
    from omibuild.planning.inputs import gather

    cache, m = Cache(tmp_path / "c"), load_manifest(manifest)
    plain = make_plan(canonical_inputs(m, cache))
    inputs = canonical_inputs(m, cache)
    env = {"PIP_EXTRA_INDEX_URL": "http://localhost:8080/simple", "HOME": str(tmp_path)}
    found = gather(m, inputs.source, cache, env=env).host_index_urls
    assert "http://localhost:8080/simple" in found
    local = make_plan(dataclasses.replace(inputs, host_index_urls=found))
    assert local.options.host_network and local.digest == plain.digest


@pytest.mark.parametrize(
    ("line", "installs"),
    [
        ("xgboost==3.2.0", "xgboost-cpu==3.2.0"),
        ("xgboost", "xgboost-cpu"),
        ("xgboost==1.7.6", "xgboost==1.7.6"),  # no CPU build of that release
        ("xgboost>=2", "xgboost>=2"),  # a range may reach releases without one
        ("xgboost[dask]==3.2.0", "xgboost[dask]==3.2.0"),
        ("torch==2.13.0", "torch==2.13.0"),
    ],
)
def test_a_framework_s_cpu_build_stands_in_where_pypi_has_one(line: str, installs: str) -> None:
    assert as_cpu_build(line) == installs
