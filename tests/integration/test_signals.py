"""`omibuild apply` stopped mid-build, as CI cancellation (SIGTERM) or the OOM killer (SIGKILL)
would: no secret is left on disk anywhere omibuild writes, no final tag exists, and a rerun
builds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import docker
from tests.integration.test_first_model import OMIBUILD, cli, new_repo, train_joblib

pytestmark = pytest.mark.integration


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                try:
                    data = path.read_bytes() if path.stat().st_size < 64 << 20 else b""
                except OSError:
                    continue
                found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_build_stopped_by_a_signal_leaves_no_secret_and_no_tag(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path, image_cleanup: list[str], sig: int
) -> None:
    repo = new_repo(tmp_path, f"signals-{sig}-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    token = f"hf_planted_{unique}"
    index_password = f"pw-planted-{unique}"
    manifest = (repo / "omi.yaml").read_text()
    # a requirement no earlier build had makes the dependency step (secrets mounted) run
    manifest = manifest.replace(
        "    - numpy==", f"    - six!=0.0.{int(unique, 16) % 10**9}\n    - numpy==", 1
    )
    manifest += "build:\n  cache: {enabled: false}\n  secrets:\n    - {id: hf, env: HF_TOKEN}\n"
    (repo / "omi.yaml").write_text(manifest)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {
        **os.environ,
        "HF_TOKEN": token,
        "MLFLOW_TRACKING_TOKEN": f"mlflow-planted-{unique}",
        # reaches the pip configuration secret; pip only trusts the host, never contacts it
        "PIP_TRUSTED_HOST": f"{index_password}.invalid",
        "TMPDIR": str(private_tmp),
    }
    proc = subprocess.Popen(
        [OMIBUILD, "apply", "--progress", "plain"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # wait until the step that mounts the secrets is running
        seen.append(line)
        if "[deps" in line and "pip install" in line:
            break
        assert time.monotonic() < deadline, "".join(seen[-30:])
    else:
        pytest.fail("apply ended before the dependency step: " + "".join(seen[-30:]))
    time.sleep(1.0)
    proc.send_signal(sig)
    rest = proc.stdout.read()
    code = proc.wait(timeout=60)
    proc.stdout.close()
    repository = f"omibuild.local/signals-{sig}-{unique}"
    image_cleanup.append(f"{repository}:latest")
    if sig == signal.SIGTERM:
        assert code == 143, rest[-2000:]
        assert rest.strip().splitlines()[-1] == "omibuild: terminated"
    else:
        assert code == -signal.SIGKILL
        # buildx runs in its own session and may finish the build it was given; give it the
        # time to, so the checks below see what it leaves
        time.sleep(20)
    needles = [token.encode(), index_password.encode(), f"mlflow-planted-{unique}".encode()]
    assert _files_holding([private_tmp, cache_dir, repo], needles) == []
    tags = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.split()
    image_cleanup += tags
    assert not [t for t in tags if not t.split(":")[-1].startswith("omibuild-tmp-")], tags

    rerun = cli(repo, "apply", "--progress", "quiet", env={"HF_TOKEN": token})
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_an_unreachable_push_target_is_found_before_any_build(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path
) -> None:
    import socket

    repo = new_repo(tmp_path, f"push-down-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repository = f"127.0.0.1:{port}/models/push-down-{unique}"
    text = (
        (repo / "omi.yaml")
        .read_text()
        .replace("  # repository: ", f"  repository: {repository}\n  # was: ", 1)
    )
    (repo / "omi.yaml").write_text(text)
    start = time.monotonic()
    pushed = cli(repo, "apply", "--push", "--progress", "plain")
    assert pushed.returncode == 2, pushed.stderr[-2000:]
    assert pushed.stderr.strip().splitlines() == [
        f"omibuild: error: cannot reach the registry 127.0.0.1:{port} for {repository}: "
        "Connection refused (hint: check image.repository, and that the registry is up and "
        "reachable from here)"
    ]
    assert "#1 " not in pushed.stdout + pushed.stderr  # buildx never ran
    assert time.monotonic() - start < 10
    assert docker("image", "ls", "-q", repository).stdout.strip() == ""


def test_a_push_that_fails_leaves_no_new_tag(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path, image_cleanup: list[str]
) -> None:
    """A registry that takes the connection and then fails: the build runs, the push fails
    (exit 1), and the local store has no tag it did not have before."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def refuse() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        repo = new_repo(tmp_path, f"push-fails-{unique}", train_joblib)
        assert cli(repo, "init").returncode == 0
        repository = f"127.0.0.1:{port}/models/push-fails-{unique}"
        text = (repo / "omi.yaml").read_text()
        (repo / "omi.yaml").write_text(
            text.replace("  # repository: ", f"  repository: {repository}\n  # was: ", 1)
        )
        pushed = cli(repo, "apply", "--push", "--progress", "quiet")
    finally:
        stop.set()
        thread.join()
        listener.close()
    listed = docker(
        "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository
    ).stdout.split()
    image_cleanup += listed
    assert pushed.returncode == 1, pushed.stderr[-2000:]
    assert listed == [], listed


def test_a_tampered_hash_memo_or_lock_is_caught_before_anything_is_tagged(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path, image_cleanup: list[str]
) -> None:
    """The cache's stat memo and omi.lock only let omibuild skip reads; a wrong digest in
    either fails the build before tagging, and the next run hashes anew. (A tampered blob of a
    remote source: test_sources.py.)"""
    import json

    repo = new_repo(tmp_path, f"tamper-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    assert cli(repo, "plan").returncode == 0  # the memo now vouches for model.joblib
    memo_path = cache_dir / "stat.json"
    memo = json.loads(memo_path.read_text())
    [key] = [k for k in memo if k.endswith("model/model.joblib")]
    memo[key][4] = "0" * 64
    memo_path.write_text(json.dumps(memo))
    repository = f"omibuild.local/tamper-{unique}"

    applied = cli(repo, "apply", "--progress", "quiet")
    listed = docker(
        "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository
    ).stdout.split()
    image_cleanup += listed
    assert applied.returncode == 1
    assert (
        "model file model.joblib has sha256 " in applied.stderr
        and ", not 000000000000" in applied.stderr
    )
    assert listed == []
    assert (
        not memo_path.exists()
        or key not in json.loads(memo_path.read_text())
        or (json.loads(memo_path.read_text())[key][4] != "0" * 64)
    )

    lock = json.loads((repo / "omi.lock").read_text())  # as the tampered plan wrote it
    assert lock["resolved"]["files"][0]["sha256"] == "0" * 64
    offline = cli(repo, "apply", "--offline", "--progress", "quiet")
    assert offline.returncode == 2 and "changed since it was resolved" in offline.stderr

    again = cli(repo, "apply", "--progress", "quiet")  # hashed anew: the right digest
    image_cleanup += [f"{repository}:latest"]
    assert again.returncode == 0, again.stderr[-2000:]
