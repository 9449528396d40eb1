"""Model layers made by omibuild, as a stranger meets them: a model trained in a fresh git
repository, `omibuild init` and `apply` as the README says. The model layer's digest is a
function of the files alone (two fresh caches, and a digest computed here, agree); a
code-only change sends no model bytes to the engine or the registry; a push lands in the
registry without the engine holding the image; and an apply killed while it streams the model
into the engine leaves nothing a later build trusts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache
from omibuild.store.hashing import sha256_file
from omibuild.store.layers import StagedLayer, layer_blob
from tests.integration.conftest import docker
from tests.integration.test_first_model import OMIBUILD, cli, new_repo, train_joblib

pytestmark = pytest.mark.integration


def _apply(repo: Path, *args: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    done = cli(repo, "apply", "--format", "json", "--progress", "quiet", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = json.loads(done.stdout)
    return record  # type: ignore[no-any-return]


def _expected_layer(repo: Path, scratch: Path) -> str:
    """The model layer's digest computed here, from the files, with a cache of its own."""
    model = repo / "model"
    files = tuple(
        ModelFile(p.relative_to(model).as_posix(), p.stat().st_size, sha256_file(p))
        for p in sorted(model.rglob("*"))
        if p.is_file()
    )
    blob, _ = layer_blob(Cache(scratch, hold=False), StagedLayer(files, model))
    return blob.digest


def _layers(ref: str) -> list[str]:
    out = docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout
    return list(json.loads(out))


def test_the_model_layer_is_the_files_own_and_a_code_change_sends_no_model_bytes(
    tmp_path: Path, unique: str, registry: str, image_cleanup: list[str]
) -> None:
    name = f"stranger-layers-{unique}"
    repo = new_repo(tmp_path, name, train_joblib)
    (repo / "model" / "weights.bin").write_bytes(os.urandom(3 << 20))  # something to move
    assert cli(repo, "init").returncode == 0
    text = (repo / "omi.yaml").read_text()
    repository = f"{registry}/omibuild-test/{name}"
    (repo / "omi.yaml").write_text(
        text.replace("image:\n", f"image:\n  repository: {repository}\n")
    )
    one = {"OMIBUILD_CACHE_DIR": str(tmp_path / "cache-one")}
    two = {"OMIBUILD_CACHE_DIR": str(tmp_path / "cache-two")}

    first = _apply(repo, env=one)
    image_cleanup += first["tags"]
    ref = first["tags"][-1]
    assert _expected_layer(repo, tmp_path / "first") in _layers(ref)
    assert first["model_bytes_read"] >= 3 << 20 and first["model_bytes_sent"] >= 3 << 20

    # a model-only change: the new layer goes into the engine's content store beside the
    # build, as it is hashed; the load then sends no model byte, and the name the layer
    # waited under is gone
    (repo / "model" / "weights.bin").write_bytes(os.urandom(3 << 20))
    changed = cli(repo, "apply", "--format", "json", "--progress", "plain", env=one)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "storing the model layers in the engine as they are hashed" in changed.stderr
    assert "loading into the engine (no model bytes: it has them" in changed.stderr
    [record] = json.loads(changed.stdout)
    assert record["model_bytes_sent"] >= 3 << 20, record
    assert _expected_layer(repo, tmp_path / "changed") in _layers(ref)
    left = docker("image", "ls", "--format", "{{.Tag}}", repository).stdout.split()
    assert {t.rsplit(":", 1)[1] for t in record["tags"]} <= set(left), left
    assert not [t for t in left if t.startswith("omibuild-tmp-")], left
    expected = _expected_layer(repo, tmp_path / "here")

    # another machine's worth of state: a fresh cache and no image; the same layer digest
    for tag in first["tags"]:
        docker("image", "rm", tag, check=False)
    again = _apply(repo, env=two)
    assert expected in _layers(ref)
    assert again["model_bytes_read"] >= 3 << 20

    # a code-only change: nothing of the model is read or sent
    (repo / "omi.yaml").write_text(
        (repo / "omi.yaml").read_text().replace("version: ", "description: changed\nversion: ", 1)
    )
    code = _apply(repo, env=two)
    assert code["status"] == "built" and code["image_digest"] != again["image_digest"]
    assert (code["model_bytes_read"], code["model_bytes_sent"]) == (0, 0), code
    assert expected in _layers(ref)

    # pushed: straight to the registry (no image in the engine), then a re-push of a code-only
    # change uploads no model byte; what is in the registry pulls and carries the same layer
    pushed = _apply(repo, "--push", env=two)  # the layer is known: only the push uploads it
    assert pushed["pushed"] and pushed["model_bytes_read"] == 0, pushed
    assert pushed["model_bytes_sent"] >= 3 << 20, pushed
    (repo / "omi.yaml").write_text(
        (repo / "omi.yaml").read_text().replace("description: changed", "description: again")
    )
    repushed = _apply(repo, "--push", env=two)
    assert repushed["pushed"] and repushed["model_bytes_sent"] == 0, repushed
    for tag in repushed["tags"]:
        docker("image", "rm", tag, check=False)
    docker("pull", "-q", ref)
    assert expected in _layers(ref)


def test_an_apply_killed_while_it_streams_the_model_leaves_nothing_trusted(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    name = f"stranger-killed-{unique}"
    repo = new_repo(tmp_path, name, train_joblib)
    (repo / "model" / "weights.bin").write_bytes(os.urandom(256 << 20))
    assert cli(repo, "init").returncode == 0
    env = {**os.environ, "OMIBUILD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [OMIBUILD, "apply", "--progress", "quiet"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # until its load (containerd's import or `docker load`) runs: the model
            # is streaming
            loads = subprocess.run(
                ["pgrep", "-P", str(proc.pid), "-f", "images import|docker load"],
                capture_output=True,
                text=True,
            )
            if loads.stdout.strip():
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)  # reaps it and closes its pipe
    assert docker("image", "inspect", f"omibuild.local/{name}:latest", check=False).returncode != 0
    # the next apply builds the image whole, with the layer the files make
    done = cli(repo, "apply", "--format", "json", "--progress", "quiet", env=dict(env))
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = json.loads(done.stdout)
    image_cleanup += record["tags"]
    assert _expected_layer(repo, tmp_path / "here") in _layers(record["tags"][-1])
    served = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sha256sum",
        record["tags"][-1],
        "/models/weights.bin",
    ).stdout.split()[0]
    assert served == sha256_file(repo / "model" / "weights.bin")
