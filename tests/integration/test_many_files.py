"""Models of any file count: a sharded checkpoint of 10,000 and of 100,000 files plans,
builds, plans a diff against its image (in the engine, and only in a registry) and no-ops,
and no label or Dockerfile line grows with the count: the image's config stays small."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.strangers import new_stranger

pytestmark = pytest.mark.integration

CONFIG_LIMIT = 64 * 1024


def shards(repo: Path, count: int) -> None:
    """A checkpoint saved in ``count`` small shards, as some trainers write one."""
    model = repo / "model"
    for i in range(count):
        folder = model / f"part-{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"shard-{i:06d}.bin").write_bytes(os.urandom(16) + i.to_bytes(4, "little"))


def config_bytes(ref: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config}}", ref],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return len(out.encode())


@pytest.mark.parametrize("count", [10_000, 100_000], ids=["10k", "100k"])
def test_a_model_of_many_files_builds_diffs_and_no_ops(
    tmp_path: Path, unique: str, engine: None, registry: str, image_cleanup: list[str], count: int
) -> None:
    import sys

    s = new_stranger(tmp_path, f"many-{count}-{unique}", Path(sys.prefix))
    shards(s.repo, count)
    s.ok("init")
    text = (s.repo / "omi.yaml").read_text()
    repository = f"{registry}/omibuild-test/many-{count}-{unique}"
    (s.repo / "omi.yaml").write_text(
        text.replace("  # repository: ", f"  repository: {repository}\n  # was: ", 1)
    )
    planned = s.cli("plan", "--format", "json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    files = sum(len(layer["files"]) for layer in json.loads(planned.stdout)["model_layers"])
    assert files == count

    applied = s.cli("apply", "--push", "--format", "json", "--progress", "quiet")
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    [record] = json.loads(applied.stdout)
    image_cleanup += record["tags"]
    ref = f"{repository}:latest"
    # the same plan, against the image this engine holds: no changes, read back from its
    # state file (the label only points at it)
    diffed = s.cli("plan", "--detailed-exitcode")
    assert diffed.returncode == 0, diffed.stdout[-2000:] + diffed.stderr[-1000:]
    assert "No changes." in diffed.stdout
    again = s.cli("apply", "--push", "--format", "json", "--progress", "quiet")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["status"] == "up to date"

    subprocess.run(["docker", "pull", "-q", ref], capture_output=True, check=True)
    assert config_bytes(ref) < CONFIG_LIMIT, config_bytes(ref)
    # only in the registry now: plan reads the state file's layer, not the model's
    subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True, check=False)
    s.extra_env["OMIBUILD_CACHE_DIR"] = str(tmp_path / "elsewhere")  # no state kept here
    remote = s.cli("plan", "--detailed-exitcode")
    assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-1000:]
    assert "in its registry" in remote.stdout and "No changes." in remote.stdout
