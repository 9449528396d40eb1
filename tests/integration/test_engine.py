"""The engine is real: buildx on the local base image, a local cache directory exported and
reused after the engine's own build cache is pruned, and a push/pull through the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import BASE_IMAGE, docker

pytestmark = pytest.mark.integration


def _forget_engine_layer_cache() -> None:
    """Drop the engine's cached layers (type=regular) but keep cache mounts such as the pip
    cache that other tests' builds rely on."""
    docker("buildx", "prune", "--all", "--force", "--filter", "type=regular")


def _build(ctx: Path, *args: str) -> str:
    proc = docker("buildx", "build", "--progress=plain", str(ctx), *args)
    return proc.stderr + proc.stdout


def test_buildx_local_cache_export_and_reuse(
    engine: None, tmp_path: Path, unique: str, image_cleanup: list[str]
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        f"RUN echo {unique} > /marker && python3 -c 'print(6*7)' > /answer\n"
        "COPY --link data.txt /data.txt\n"
    )
    (ctx / "data.txt").write_text(unique)
    cache = tmp_path / "cache"
    tag = f"omibuild-test/engine:{unique}"
    image_cleanup.append(tag)
    first = _build(
        ctx, "--cache-to", f"type=local,dest={cache},mode=max", "--output", f"type=image,name={tag}"
    )
    assert re.search(r"\[2/3\] RUN echo", first) and (cache / "index.json").is_file()
    docker("image", "rm", "-f", tag)
    # Forget the engine's own layer cache: only the exported directory can supply the step now.
    _forget_engine_layer_cache()
    assert unique not in docker("buildx", "du", "--verbose").stdout
    second = _build(
        ctx, "--cache-from", f"type=local,src={cache}", "--output", f"type=image,name={tag}"
    )
    run_step = re.search(r"#(\d+) \[2/3\] RUN echo", second)
    assert run_step, second[-2000:]
    assert f"#{run_step.group(1)} CACHED" in second, second[-2000:]
    out = docker("run", "--rm", tag, "cat", "/marker", "/answer").stdout.split()
    assert out == [unique, "42"]


def test_push_and_pull_through_the_local_registry(
    registry: str, tmp_path: Path, unique: str, image_cleanup: list[str]
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo {unique} > /marker\n")
    ref = f"{registry}/omibuild-test/engine:{unique}"
    image_cleanup.append(ref)
    docker(
        "buildx",
        "build",
        "--progress=quiet",
        str(ctx),
        "--output",
        f"type=image,name={ref},push=true",
    )
    docker("image", "rm", "-f", ref, check=False)
    assert docker("image", "inspect", ref, check=False).returncode != 0
    docker("pull", "-q", ref)
    assert docker("run", "--rm", ref, "cat", "/marker").stdout.strip() == unique
