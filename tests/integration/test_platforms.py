"""Two architectures, as a stranger meets them: a model trained in a fresh git repository,
omibuild from its wheel, `image.platforms: [linux/amd64, linux/arm64]` and `apply --push` to
the loopback registry over setup's two-architecture base. Read with the registry's own API and
the engine (never omibuild's code): one model layer under both manifests, each platform's
interpreter its own machine's, the arm64 image answering under QEMU as the amd64 one does;
then `omibuild check --platform linux/arm64`. And a platform the base lacks: refused before
any build, in one line naming the base and what it offers (BuildKit would take another
platform's base and say nothing: the "arm64" image held x86-64 binaries)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.strangers import iris_for_registry, new_stranger, training_venv
from tests.integration.test_attest import raw_manifest
from tests.integration.test_install import IRIS_JOBLIB, SKLEARN

pytestmark = pytest.mark.integration
TWO = ("linux/amd64", "linux/arm64")
ROWS = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]]  # one of each class


def _blob(repository: str, digest: str) -> bytes:
    host, _, name = repository.partition("/")
    with urllib.request.urlopen(f"http://{host}/v2/{name}/blobs/{digest}", timeout=120) as resp:
        return resp.read()  # type: ignore[no-any-return]


def _model_in(layer: bytes) -> bytes | None:
    """models/model.joblib's bytes where this layer (a tar) holds it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            member = tar.extractfile("models/model.joblib")
            return member.read() if member else None
    except (tarfile.TarError, KeyError):
        return None


def _answer(image: str, platform: str, name: str) -> list[Any]:
    """The v2 answer of ``image``'s ``platform`` to ROWS: the container started by the engine
    as a platform would start it (no OMI variable set), waited for up to 5 min (emulated)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "--platform", platform, "-p", f"127.0.0.1:{port}:8080",
         image],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.strip()  # fmt: skip
    body = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                        "data": [x for row in ROWS for x in row]}]}  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{name}/infer", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    return json.load(resp)["outputs"][0]["data"]  # type: ignore[no-any-return]
            except OSError:
                assert time.monotonic() < deadline, f"the {platform} image never answered"
                time.sleep(1)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def test_two_platforms_share_one_model_layer_and_arm64_answers_under_emulation(
    tmp_path: Path, unique: str, registry: str
) -> None:
    name = f"arches-{unique}"
    s, repository = iris_for_registry(tmp_path, name, registry)
    manifest = s.repo / "omi.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace("image:\n", f"image:\n  platforms: [{', '.join(TWO)}]\n", 1))
    assert "platforms     linux/amd64, linux/arm64" in s.ok("plan")
    [record] = json.loads(s.ok("apply", "--push", "--format", "json", "--progress", "quiet"))
    assert record["status"] == "built", record
    latest = f"{repository}:latest"

    index = json.loads(raw_manifest(latest))
    by_platform = {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in index["manifests"]
    }
    assert set(TWO) <= set(by_platform), by_platform
    model = (s.repo / "model" / "model.joblib").read_bytes()
    carried = {}
    for platform in TWO:
        image = json.loads(raw_manifest(f"{repository}@{by_platform[platform]}"))
        config = json.loads(_blob(repository, image["config"]["digest"]))
        assert f"{config['os']}/{config['architecture']}" == platform
        small = [layer["digest"] for layer in image["layers"] if layer["size"] < 1 << 20]
        carried[platform] = [d for d in small if _model_in(_blob(repository, d)) == model]
    # the model's bytes are one blob, named by both manifests
    assert carried["linux/amd64"] == carried["linux/arm64"] and len(carried["linux/amd64"]) == 1

    for tag in record["tags"]:  # both platforms into the engine, under every tag it pushed
        for platform in TWO:
            subprocess.run(["docker", "pull", "-q", "--platform", platform, tag], check=True,
                           capture_output=True, timeout=600)  # fmt: skip
    machine, asks = {}, "import platform; print(platform.machine())"
    for platform in TWO:
        machine[platform] = subprocess.run(
            ["docker", "run", "--rm", "--platform", platform, "--entrypoint",
             "/opt/omi/venv/bin/python", latest, "-c", asks],
            capture_output=True, text=True, check=True, timeout=300,
        ).stdout.strip()  # fmt: skip
    assert machine == {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
    native = _answer(latest, "linux/amd64", name)
    assert native == [0, 1, 2]
    assert _answer(latest, "linux/arm64", name) == native  # under QEMU, the same answers

    checked = s.cli("check", "--platform", "linux/arm64", latest, "--format", "json")
    findings = json.loads(checked.stdout)["findings"]
    assert checked.returncode == 0, [f for f in findings if not f["ok"]] or checked.stderr
    binaries = {f["requirement"]: f["detail"] for f in findings if "binaries" in f["requirement"]}
    assert binaries == {
        f"its binaries are built for the image's platform ({p})": f"/opt/omi/venv/bin/python: {a}"
        for p, a in (("linux/amd64", "amd64"), ("linux/arm64", "arm64"))
    }
    assert any(f["requirement"].endswith("answers the example input") for f in findings)
    asked = s.cli("check", "--platform", "linux/s390x", latest)
    assert asked.returncode == 2 and asked.stderr.startswith(
        f"omibuild: error: {latest} offers linux/amd64, linux/arm64, not linux/s390x"
    ), asked.stderr


def test_a_platform_the_base_lacks_is_refused_by_plan_and_apply(
    tmp_path: Path, unique: str, engine: None
) -> None:
    s = new_stranger(tmp_path, f"platforms-{unique}", training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    plan = json.loads(s.ok("plan", "--format", "json"))
    base = plan["base_image"]
    other = "linux/s390x"  # setup's base has amd64 and arm64
    text = manifest.read_text()
    assert "image:\n" in text
    manifest.write_text(
        text.replace("image:\n", f"image:\n  platforms: [linux/amd64, {other}]\n", 1)
    )
    for verb in (("plan",), ("apply", "--progress", "plain")):
        done = s.cli(*verb)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("omibuild: error:")]
        assert (
            lines and f"base image {base} offers linux/amd64, linux/arm64, not {other}" in lines[0]
        ), done.stderr
        assert "Traceback" not in done.stderr and "#1 " not in done.stderr  # nothing was built
    # the platforms it offers are fine
    manifest.write_text(text.replace("image:\n", f"image:\n  platforms: [{', '.join(TWO)}]\n", 1))
    s.ok("plan")
