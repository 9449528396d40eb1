"""Model layers made by omibuild, as a stranger meets them: a model trained in a fresh git
repository, `omibuild init` and `apply` as the README says. The model layer's digest is a
function of the files alone (two fresh caches, and a digest computed here, agree); a
code-only change sends no model bytes to the engine or the registry; a push lands in the
registry without the engine holding the image; and an apply killed while it streams the model
into the engine leaves nothing a later build trusts."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omibuild.engine.containerd import ContentError, ContentStore
from omibuild.engine.images import CONTAINERD_SOCKETS
from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache
from omibuild.store.hashing import sha256_file
from omibuild.store.layers import LayerFileChanged, StagedLayer, layer_blob
from tests.integration.conftest import docker
from tests.integration.test_first_model import OMIBUILD, cli, new_repo, train_joblib

pytestmark = pytest.mark.integration

SOCKET = CONTAINERD_SOCKETS[0]
CTR = ["ctr", "--address", SOCKET, "--namespace", "moby"]
INGESTS = Path("/var/lib/docker/containerd/daemon/io.containerd.content.v1.content/ingest")


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


def _ingesting() -> bool:
    return INGESTS.is_dir() and any(INGESTS.iterdir())


def _omibuild_leases() -> list[str]:
    out = subprocess.run([*CTR, "leases", "ls", "--quiet"], capture_output=True, text=True)
    return [line for line in out.stdout.split() if line.startswith("omibuild-")]


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
        while True:  # until the model streams into the engine: a write in containerd's
            # content store (its gRPC API), or a load (containerd's import or `docker load`)
            loads = subprocess.run(
                ["pgrep", "-P", str(proc.pid), "-f", "images import|docker load"],
                capture_output=True,
                text=True,
            )
            if loads.stdout.strip() or _ingesting():
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
    # a write cut short stays under omibuild's lease, which expires by itself within the hour
    # (containerd's collector then drops the partial write)
    listed = subprocess.run([*CTR, "leases", "ls"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        if line.startswith("omibuild-"):
            [expire] = re.findall(r"containerd\.io/gc\.expire=(\S+?)(?:,|$)", line.split()[-1])
            left = datetime.datetime.fromisoformat(expire) - datetime.datetime.now(datetime.UTC)
            assert left <= datetime.timedelta(hours=1), line
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


def test_the_engine_s_content_store_takes_a_blob_under_a_lease_and_drops_a_broken_one(
    engine: None,
) -> None:
    """omibuild's containerd client, on the engine's own containerd: a blob written in
    pieces is named by the digest of its bytes and readable; a stream that fails part way
    (a file changed under it) raises that failure, and commits nothing; no lease of
    omibuild's outlives the block."""
    data = os.urandom(3 << 20) + b"tail"
    with ContentStore(SOCKET) as store, store.lease() as lease:
        assert lease in _omibuild_leases()
        digest = store.write((data[i : i + 700_000] for i in range(0, len(data), 700_000)),
                             len(data), lease)  # fmt: skip
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        got = subprocess.run([*CTR, "content", "get", digest], capture_output=True, check=True)
        assert got.stdout == data

        broken = os.urandom(2 << 20)

        def changed() -> Iterator[bytes]:
            yield broken[: 1 << 20]
            raise LayerFileChanged("model file w changed")

        with pytest.raises(LayerFileChanged):
            store.write(changed(), len(broken), lease)
        # the wrong total is refused by containerd itself, in one line
        with pytest.raises(ContentError, match="failed size validation: 2097152 != 2097153"):
            store.write(iter([broken]), len(broken) + 1, lease)
    assert lease not in _omibuild_leases()
    listed = subprocess.run([*CTR, "content", "ls", "--quiet"], capture_output=True, text=True)
    assert "sha256:" + hashlib.sha256(broken).hexdigest() not in listed.stdout
