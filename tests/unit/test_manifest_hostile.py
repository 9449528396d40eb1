"""Hostile manifests and model directories, as a CI job validating untrusted pull requests
meets them: each ends in one line, exit 1 or 2, within a time and memory bound (the CLI runs
under `ulimit -v`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MEMORY_KB = 1_000_000  # the whole interpreter, imports included
SECONDS = 15

HEAD = """apiVersion: omibuild/v1
name: hostile
model:
  source: {local: {path: model}}
  flavor: sklearn
image:
  requirements: [scikit-learn==1.5.2]
"""


def omibuild(repo: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run the CLI bounded in memory and time: (exit code, stderr lines)."""
    cmd = f"ulimit -v {MEMORY_KB}; exec {sys.executable} -m omibuild " + " ".join(args)
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", cmd],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=SECONDS * 4,
        env={**os.environ, "OMIBUILD_CACHE_DIR": str(repo / ".cache"), **(env or {})},
        check=False,
    )
    assert time.monotonic() - start < SECONDS, args
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, [ln for ln in proc.stderr.splitlines() if ln.strip()]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.joblib").write_bytes(b"weights")
    return tmp_path


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return HEAD + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("alias bomb, 9 levels (387 million values)", _alias_bomb(9), "expands to more than"),
        ("flow nesting 50,000 deep", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deep"),
        (
            "block nesting 200 deep",
            HEAD + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
            "nested more than",
        ),
    ],
)
def test_bombs_and_deep_nesting_are_one_invalid_line(
    repo: Path, name: str, text: str, message: str
) -> None:
    (repo / "omi.yaml").write_text(text)
    for verb in ("validate", "plan"):
        code, lines = omibuild(repo, verb)
        assert code == 1, (name, lines)
        assert message in lines[0] and lines[0].startswith(
            ("omi.yaml:", "omibuild: error: omi.yaml:")
        )


def test_a_device_file_and_an_endless_stream_are_read_only_so_far(repo: Path) -> None:
    code, lines = omibuild(repo, "validate", "/dev/zero")
    assert code == 1 and lines[0] == (
        "/dev/zero:1:1: $: the file is larger than 1 MiB (hint: is this really omi.yaml?)"
    )
    fifo = repo / "stream.yaml"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["bash", "-c", f"yes 'k: v' > {fifo}"], stderr=subprocess.DEVNULL)
    try:
        code, lines = omibuild(repo, "validate", "stream.yaml")
    finally:
        writer.kill()
        writer.wait()
    assert code == 1 and "larger than 1 MiB" in lines[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: (m / "loop").symlink_to(m / "loop"), "model/loop: a symlink loop"),
        (lambda m: os.mkfifo(m / "pipe"), "model/pipe: not a regular file"),
        (lambda m: (m / "gone").symlink_to(m / "nowhere"), "model/gone: a symlink that leads"),
    ],
    ids=["symlink loop", "fifo", "dangling symlink"],
)
def test_odd_files_in_the_model_directory_are_named(repo: Path, make: object, message: str) -> None:
    (repo / "omi.yaml").write_text(HEAD)
    make(repo / "model")  # type: ignore[operator]
    code, lines = omibuild(repo, "plan")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("omibuild: error: ") and message in lines[0]


def test_a_variable_holding_a_newline_is_refused_where_it_would_split_a_label(repo: Path) -> None:
    (repo / "omi.yaml").write_text(
        HEAD.replace("name: hostile", 'name: hostile\nauthors: ["${WHO}"]')
    )
    code, lines = omibuild(repo, "plan", env={"WHO": "a\nLABEL evil=1"})
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("omibuild: error: omi.yaml:3:11: $.authors[0]: control characters")


def test_a_full_disk_is_an_io_error_not_a_crash(repo: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root, as make test does")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k", "count=64"],
                       capture_output=True, check=False)  # fmt: skip
        (repo / "omi.yaml").write_text(HEAD)
        code, lines = omibuild(repo, "plan", env={"OMIBUILD_CACHE_DIR": str(full / "cache")})
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("omibuild: error: ") and "No space left on device" in lines[0]
