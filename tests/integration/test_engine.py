"""The engine is real: buildx on the local base image, a local cache directory exported and
reused after the engine's own build cache is pruned, and a push/pull through the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import BASE_IMAGE, docker

pytestmark = pytest.mark.integration


def _records() -> list[dict[str, str]]:
    """The engine's build-cache records, from `buildx du --verbose`."""
    out = docker("buildx", "du", "--verbose").stdout
    records = []
    for block in out.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "ID" in fields:
            records.append(fields)
    return records


def _forget_engine_layers(marker: str) -> None:
    """Drop this test's layers from the engine's own cache, and only those: the records whose
    description names the marker and every record built on them, children first. The rest
    of the engine's cache (other tests' layers, the pip cache mount) is left alone."""
    for _ in range(10):
        records = _records()
        doomed = {r["ID"] for r in records if marker in r.get("Description", "")}
        grew = True
        while grew:
            children = {
                r["ID"]
                for r in records
                if doomed & set(r.get("Parent", "").split(",")) and r["ID"] not in doomed
            }
            grew = bool(children)
            doomed |= children
        if not doomed:
            return
        parents = {p for r in records if r["ID"] in doomed for p in r.get("Parent", "").split(",")}
        for record_id in sorted(doomed, key=lambda i: i in parents):  # leaves first
            docker("buildx", "prune", "--force", "--all", "--filter", f"id={record_id}")


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
    # Forget the engine's own copy of these layers: only the exported directory can supply
    # the step now.
    _forget_engine_layers(unique)
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


def test_a_secret_held_in_memory_reaches_the_build_step_and_no_layer(
    tmp_path: Path, unique: str, image_cleanup: list[str]
) -> None:
    """`--secret id=...,env=...`: the value goes from omibuild's memory to buildx's
    environment to the step's mount, and nowhere else."""
    import hashlib

    from omibuild.engine.buildx import BuildxExecutor
    from omibuild.engine.request import BuildRequest, BuildSecret

    value = f"s3cret-{unique}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "RUN --mount=type=secret,id=token,required=true "
        "sha256sum /run/secrets/token | cut -c1-64 > /token.sha256\n"
    )
    ref = f"omibuild.local/secret-test:{unique}"
    image_cleanup.append(ref)
    result = BuildxExecutor().build(
        BuildRequest(
            context=tmp_path,
            dockerfile=tmp_path / "Dockerfile",
            tags=(ref,),
            secrets=(BuildSecret("token", value=value),),
            no_cache=True,
            progress="quiet",
        )
    )
    assert result.ok, result.log_tail[-20:]
    seen = docker("run", "--rm", ref, "cat", "/token.sha256").stdout.strip()
    assert seen == hashlib.sha256(value.encode()).hexdigest()
    saved = tmp_path / "image.tar"
    docker("image", "save", "-o", str(saved), ref)
    assert value.encode() not in saved.read_bytes()
