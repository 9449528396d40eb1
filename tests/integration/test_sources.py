"""Model sources against real services: a real `mlflow server` and the real huggingface_hub
client talking to a loopback Hub; the verified cache; omi.lock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from omibuild.errors import SourceError, UsageError
from omibuild.manifest.validate import load_manifest
from omibuild.progress import QUIET
from omibuild.sources import get_source
from omibuild.sources.lock import LockMismatch
from omibuild.sources.resolve import resolve, stage
from omibuild.store.cache import Cache
from tests.fakehub import FakeHub

# one worker runs these together: they share one mlflow server
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("mlflow-server")]


def _manifest(repo: Path, source_yaml: str, flavor: str = "pyfunc") -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "omi.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: omibuild/v1
        name: sourced
        model:
          source:
        {textwrap.indent(source_yaml, "    ")}
          flavor: {flavor}
        """)
    )
    return repo / "omi.yaml"


def _log_model(tracking: str, name: str, c: float) -> tuple[str, str]:
    """Log and register a small sklearn model; returns (run id, version)."""
    import mlflow
    import mlflow.sklearn
    import sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking)
    x, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's own advice about signatures and pip
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(
                LogisticRegression(C=c, max_iter=300).fit(x, y),
                name="model",
                registered_model_name=name,
                # stated, not inferred: inference loads the model in a subprocess (seconds)
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            )
    return run.info.run_id, str(info.registered_model_version)


@pytest.fixture
def registered(mlflow_server: str, unique: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    name = f"iris-{unique}"
    run1, v1 = _log_model(mlflow_server, name, 1.0)
    MlflowClient(mlflow_server).set_registered_model_alias(name, "champion", v1)
    return {"name": name, "run": run1, "version": v1, "tracking": mlflow_server}


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def test_mlflow_by_version_alias_and_run(
    registered: dict[str, str], tmp_path: Path, cache: Cache
) -> None:
    name, run, tracking = registered["name"], registered["run"], registered["tracking"]
    results = {}
    for label, uri in {
        "version": f"models:/{name}/1",
        "alias": f"models:/{name}@champion",
        "run": f"runs:/{run}/model",
    }.items():
        path = _manifest(tmp_path / label, f'mlflow: {{uri: "{uri}", tracking_uri: "{tracking}"}}')
        m = load_manifest(path, env={})
        resolved = resolve(m, cache, QUIET)
        assert resolved.origin_id == run, label
        assert any(f.path.endswith("MLmodel") for f in resolved.files)
        assert any(r.startswith("scikit-learn") for r in resolved.requirements)
        assert resolved.flavor_hint == "pyfunc"
        results[label] = resolved
        assert (path.parent / "omi.lock").is_file()
    assert results["version"].digest == results["alias"].digest
    meta = dict(results["alias"].metadata)
    assert meta["alias"] == "champion" and meta["model_version"] == "1"
    assert meta["registered_model"] == name and meta["experiment_id"]


def test_second_fetch_downloads_nothing_and_alias_moves_are_caught(
    registered: dict[str, str], tmp_path: Path, cache: Cache
) -> None:
    from mlflow.tracking import MlflowClient

    name, tracking = registered["name"], registered["tracking"]
    path = _manifest(
        tmp_path / "r", f'mlflow: {{uri: "models:/{name}@champion", tracking_uri: "{tracking}"}}'
    )
    m = load_manifest(path, env={})
    first = get_source("mlflow", cache, QUIET)
    resolved = first.resolve(m.source, m.root)
    first.fetch(resolved, tmp_path / "stage1")
    assert first.downloaded_bytes > 0  # type: ignore[attr-defined]
    resolve(m, cache, QUIET)  # writes omi.lock
    # A new process-like source on the same cache: nothing is downloaded again.
    second = get_source("mlflow", cache, QUIET)
    again = second.resolve(m.source, m.root)
    assert second.fetch(again, tmp_path / "stage2") == 0
    assert second.downloaded_bytes == 0  # type: ignore[attr-defined]
    assert sorted(p.name for p in (tmp_path / "stage2").rglob("*") if p.is_file()) == sorted(
        p.name for p in (tmp_path / "stage1").rglob("*") if p.is_file()
    )
    # Move the alias: --locked refuses, naming the change.
    run2, v2 = _log_model(tracking, name, 0.5)
    MlflowClient(tracking).set_registered_model_alias(name, "champion", v2)
    with pytest.raises(LockMismatch) as err:
        resolve(m, cache, QUIET, locked=True)
    assert f"version 1 → {v2}" in str(err.value)
    moved = resolve(m, cache, QUIET)
    assert moved.origin_id == run2


def test_tampered_cache_entry_is_detected_and_fetched_again(
    registered: dict[str, str], tmp_path: Path, cache: Cache
) -> None:
    path = _manifest(
        tmp_path / "r",
        f'mlflow: {{uri: "models:/{registered["name"]}/1", '
        f'tracking_uri: "{registered["tracking"]}"}}',
    )
    m = load_manifest(path, env={})
    resolved = resolve(m, cache, QUIET)
    victim = max(resolved.files, key=lambda f: f.size)
    blob = cache.blob_path(victim.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"tampered" + blob.read_bytes()[8:])
    assert not cache.has_blob(victim.sha256, victim.size)  # detected, and dropped
    source = get_source("mlflow", cache, QUIET)
    assert source.fetch(resolved, tmp_path / "stage") == victim.size  # fetched again
    assert cache.has_blob(victim.sha256, victim.size)


def test_offline_uses_only_the_lock_and_the_cache(
    registered: dict[str, str], tmp_path: Path, cache: Cache
) -> None:
    path = _manifest(tmp_path / "r", f'mlflow: {{uri: "models:/{registered["name"]}@champion"}}')
    m = load_manifest(path, env={})
    os.environ["MLFLOW_TRACKING_URI"] = registered["tracking"]
    try:
        resolved = resolve(m, cache, QUIET)
        stage(resolved, cache, QUIET, tmp_path / "s1")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # nothing listens there
    try:
        offline = resolve(m, cache, QUIET, offline=True)
        assert offline == resolved
        assert stage(offline, cache, QUIET, tmp_path / "s2", offline=True) == 0
        with pytest.raises(SourceError):
            resolve(m, cache, QUIET)  # online, it would have to reach the server
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    (path.parent / "omi.lock").unlink()
    with pytest.raises(UsageError, match="--offline needs"):
        resolve(m, cache, QUIET, offline=True)


def test_unreachable_tracking_server_is_one_line_without_credentials(
    tmp_path: Path, cache: Cache
) -> None:
    path = _manifest(
        tmp_path / "r",
        'mlflow: {uri: "models:/x@y", tracking_uri: "http://user:s3cret-pass@127.0.0.1:9"}',
    )
    m = load_manifest(path, env={})
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        resolve(m, cache, QUIET)
    message = str(err.value)
    assert "\n" not in message and "127.0.0.1:9" in message
    assert "MLFLOW_TRACKING_URI" in message and "s3cret-pass" not in message
    assert time.monotonic() - start < 60  # retried with backoff, then gave up


def test_missing_model_version_has_its_own_message(
    registered: dict[str, str], tmp_path: Path, cache: Cache
) -> None:
    path = _manifest(
        tmp_path / "r",
        f'mlflow: {{uri: "models:/{registered["name"]}/99", '
        f'tracking_uri: "{registered["tracking"]}"}}',
    )
    with pytest.raises(SourceError, match="has no version 99"):
        resolve(load_manifest(path, env={}), cache, QUIET)


# -- Hugging Face ---------------------------------------------------------------------------


def _hf_manifest(tmp_path: Path, hub: FakeHub, repo: str, extra: str = "") -> Path:
    return _manifest(
        tmp_path / "r",
        f"huggingface: {{repo: {repo}, endpoint: {hub.endpoint}{extra}}}",
        flavor="transformers",
    )


def test_hf_revision_pinning_and_patterns(fake_hub: FakeHub, tmp_path: Path, cache: Cache) -> None:
    repo = fake_hub.repos.setdefault(
        "org/tiny", __import__("tests.fakehub").fakehub.Repo(license="mit")
    )
    weights = os.urandom(4096)
    first = repo.commit(
        {
            "config.json": b'{"a": 1}',
            "model.safetensors": weights,
            "model.h5": b"tf weights",
            "README.md": b"# tiny",
        }
    )
    path = _hf_manifest(tmp_path, fake_hub, "org/tiny", ', allow: ["*.json", "*.safetensors"]')
    m = load_manifest(path, env={})
    resolved = resolve(m, cache, QUIET)
    assert resolved.origin_id == first and resolved.version == first[:12]
    assert sorted(f.path for f in resolved.files) == ["config.json", "model.safetensors"]
    assert dict(resolved.metadata)["license"] == "mit"
    assert resolved.flavor_hint == "transformers"
    # main moves; a pinned revision does not
    second = repo.commit({"config.json": b'{"a": 2}', "model.safetensors": weights})
    assert resolve(m, cache, QUIET, update_lock=False).origin_id == second
    with pytest.raises(LockMismatch):
        resolve(m, cache, QUIET, locked=True)
    pinned = _hf_manifest(tmp_path / "p", fake_hub, "org/tiny", f", revision: {first}")
    assert resolve(load_manifest(pinned, env={}), cache, QUIET).origin_id == first
    ignore = _hf_manifest(tmp_path / "i", fake_hub, "org/tiny", ', ignore: ["*.h5", "*.md"]')
    got = resolve(load_manifest(ignore, env={}), cache, QUIET, update_lock=False)
    assert sorted(f.path for f in got.files) == ["config.json", "model.safetensors"]


def test_hf_second_fetch_downloads_zero_bytes(
    fake_hub: FakeHub, tmp_path: Path, cache: Cache
) -> None:
    from tests.fakehub import Repo

    fake_hub.repos["org/zero"] = repo = Repo()
    repo.commit({"config.json": b"{}", "weights.bin": os.urandom(200_000)})
    m = load_manifest(_hf_manifest(tmp_path, fake_hub, "org/zero"), env={})
    resolved = resolve(m, cache, QUIET)
    stage(resolved, cache, QUIET, tmp_path / "s1")
    served = fake_hub.bytes_served
    assert served >= 200_000
    again = resolve(m, cache, QUIET)
    assert stage(again, cache, QUIET, tmp_path / "s2") == 0
    assert fake_hub.bytes_served == served  # the server saw no download
    assert (tmp_path / "s2" / "weights.bin").read_bytes() == (
        tmp_path / "s1" / "weights.bin"
    ).read_bytes()


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing", "repository not found, or private (HF_TOKEN is"),
        ("gated", "is gated: accept its terms"),
        ("revision", "revision 'nope' does not exist"),
        ("renamed", "was renamed to org/new-name"),
    ],
)
def test_hf_failures_have_their_own_messages(
    fake_hub: FakeHub, tmp_path: Path, cache: Cache, setup: str, fragment: str
) -> None:
    from tests.fakehub import Repo

    repo = Repo()
    repo.commit({"config.json": b"{}"})
    extra = ""
    if setup == "gated":
        repo.gated = True
    if setup == "revision":
        extra = ", revision: nope"
    if setup == "renamed":
        repo.renamed_to = "org/new-name"
    if setup != "missing":
        fake_hub.repos["org/thing"] = repo
    m = load_manifest(_hf_manifest(tmp_path, fake_hub, "org/thing", extra), env={})
    with pytest.raises(SourceError) as err:
        resolve(m, cache, QUIET)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_hf_download_killed_halfway_leaves_no_cache_entry(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    from tests.fakehub import Repo

    fake_hub.repos["org/big"] = repo = Repo()
    big = os.urandom(8 << 20)
    repo.commit({"config.json": b"{}", "weights.bin": big})
    fake_hub.slow_bytes_per_second = 2 << 20  # 4 s for the weights
    path = _hf_manifest(tmp_path, fake_hub, "org/big")
    cache_root = tmp_path / "cache"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from omibuild.manifest.validate import load_manifest
        from omibuild.store.cache import Cache
        from omibuild.progress import QUIET
        from omibuild.sources.resolve import resolve
        cache = Cache(Path({str(cache_root)!r}))
        resolve(load_manifest(Path({str(path)!r}), env={{}}), cache, QUIET)
    """)
    with subprocess.Popen([sys.executable, "-c", script], start_new_session=True) as proc:
        deadline = time.monotonic() + 30
        while fake_hub.bytes_served < (1 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake_hub.bytes_served >= (1 << 20), "the download never started"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    import hashlib

    cache = Cache(cache_root)
    digest = hashlib.sha256(big).hexdigest()
    assert not cache.blob_path(digest).exists()
    assert list((cache_root / "index").iterdir()) == []
    # and the next run completes normally
    fake_hub.slow_bytes_per_second = None
    resolved = resolve(load_manifest(path, env={}), cache, QUIET)
    assert cache.has_blob(digest, len(big))
    assert any(f.sha256 == digest for f in resolved.files)
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
