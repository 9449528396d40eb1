"""A stranger's setup, as the README tells one to make it: omibuild pip-installed from its
wheel into a virtual environment of its own (no checkout on the path), and a model trained
in a fresh git repository by a `train.py` run in a training environment of the user's own
(packages from the index), active as `VIRTUAL_ENV` when omibuild runs.

Both kinds of environment are made once per test run, under one lock per environment so
that parallel workers share them, and removed when the run ends (tests/conftest.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

# torch's CPU build lies on this machine's disk (pip's find-links); PyPI's Linux wheel is the
# CUDA build, 3 GB with its libraries
TORCH_CPU_WHEEL = next(Path("/opt/wheels").glob("torch-2.13.0+cpu-*.whl"), Path("/nonexistent"))
RUN_ENVS = ROOT / ".cache" / "test-envs"  # removed by tests/conftest.py when the run ends


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def clean_env() -> dict[str, str]:
    """This process's environment less what ties it to the checkout and its venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "OMIBUILD_CACHE_DIR", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if p != venv_bin)
    return env


@contextmanager
def _locked(name: str) -> Iterator[Path]:
    RUN_ENVS.mkdir(parents=True, exist_ok=True)
    with open(RUN_ENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield RUN_ENVS / name


def _this_run() -> str:
    """The run's name (tests/conftest.py): what a wheel and its venvs are built for. A run
    that was killed leaves them behind (the run's end removes RUN_ENVS); keyed by run, the
    next one builds its own from the checkout as it is, not the killed run's."""
    return os.environ["OMI_TEST_RUN"][:12]


def wheel() -> Path:
    """The wheel of this checkout, built once per run."""
    with _locked(f"dist-{_this_run()}") as dist:
        found = sorted(dist.glob("omibuild-*.whl"))
        if not found:
            _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", str(dist), str(ROOT))  # fmt: skip
            found = sorted(dist.glob("omibuild-*.whl"))
        return found[0]


def omibuild_from_wheel(extras: str = "") -> Path:
    """The `omibuild` executable of a venv made by `pip install omibuild-*.whl[extras]`."""
    built = wheel()
    with _locked(f"omibuild-{extras or 'plain'}-{_this_run()}") as venv:
        exe = venv / "bin" / "omibuild"
        if not exe.exists():
            _run(sys.executable, "-m", "venv", str(venv))
            spec = f"{built}[{extras}]" if extras else str(built)
            _run(str(venv / "bin" / "pip"), "install", "-q", spec, env=clean_env())
        return exe


def training_venv(name: str, requirements: list[str]) -> Path:
    """A user's training environment: a venv with ``requirements`` from the index."""
    key = hashlib.sha256(json.dumps(requirements).encode()).hexdigest()[:8]
    with _locked(f"train-{name}-{key}") as venv:
        if not (venv / ".done").exists():
            _run(sys.executable, "-m", "venv", str(venv))
            _run(str(venv / "bin" / "pip"), "install", "-q", *requirements, env=clean_env())
            (venv / ".done").touch()
        return venv


@dataclass
class Stranger:
    """One stranger's model repository, their training venv, and omibuild from the wheel."""

    repo: Path
    venv: Path
    omibuild: Path
    extra_env: dict[str, str] = field(default_factory=dict)  # the user's own settings

    @property
    def env(self) -> dict[str, str]:
        env = clean_env()
        env["VIRTUAL_ENV"] = str(self.venv)  # as `source .venv/bin/activate` leaves it
        env["PATH"] = f"{self.venv / 'bin'}:{self.omibuild.parent}:{env['PATH']}"
        # the stranger's own omibuild cache, in the test's temporary directory: it goes with
        # the test (a run's strangers once left 12 GB of image layouts in a shared one)
        env["OMIBUILD_CACHE_DIR"] = str(self.repo.parent / ".omibuild-cache")
        return env | self.extra_env

    def train(self, script: str) -> None:
        (self.repo / "train.py").write_text(script)
        _run(str(self.venv / "bin" / "python"), "train.py", cwd=self.repo, env=self.env)

    def cli(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.omibuild), *args],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (
            f"omibuild {' '.join(args)}: {done.stdout[-3000:]}" + (done.stderr[-4000:])
        )
        return done.stdout


def new_stranger(
    tmp_path: Path, name: str, venv: Path, extras: str = "", files: dict[str, str] | None = None
) -> Stranger:
    """A fresh git repository named ``name`` (its images are removed when the run ends)."""
    from tests.conftest import remember_image

    remember_image(f"omibuild.local/{name}")
    repo = tmp_path / name
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README.md").write_text(f"# {name}\n\nA model.\n")
    for rel, text in (files or {}).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    return Stranger(repo, venv, omibuild_from_wheel(extras))


def iris_for_registry(tmp_path: Path, name: str, registry: str) -> tuple[Stranger, str]:
    """A stranger's iris model, `omibuild init`ed, its omi.yaml pointed at ``registry``
    (the commented repository line init writes, filled in): (the stranger, the repository).
    The repository's images are removed when the run ends."""
    from tests.conftest import remember_image
    from tests.integration.test_install import IRIS_JOBLIB, SKLEARN

    s = new_stranger(tmp_path, name, training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    repository = f"{registry}/omibuild-test/{name}"
    remember_image(repository)
    text, commented = manifest.read_text(), f"# repository: registry.example.com/models/{name}"
    assert commented in text
    manifest.write_text(text.replace(commented, f"repository: {repository}"))
    return s, repository
