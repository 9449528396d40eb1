from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "manifests"
SETUP_ENGINE = (
    Path(os.environ.get("OMI_DEV_STATE", "/var/lib/omibuild-dev")) / "engine-started-by-setup"
)


@pytest.fixture(scope="session")
def example_models() -> None:
    """The example models are generated, never committed: make sure they exist. Only the tests
    that read examples/ ask for this (``pytestmark``); the others train their own models."""
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate.py")], check=True, capture_output=True
    )


def example_manifests() -> list[Path]:
    return sorted(EXAMPLES.glob("*/omi.yaml"))


def pytest_configure(config: pytest.Config) -> None:
    # The controller names the run before it starts any xdist worker; workers inherit it.
    os.environ.setdefault("OMI_TEST_RUN", uuid.uuid4().hex)


# The run's disk footprint: the root filesystem's use when the run starts, its highest while
# it runs (sampled every 2 s by the controller) and after the run's own cleanup. Written to
# DISK_RECORD for `make bench` (row "disk left by the test run") and said as the run exits.
DISK_RECORD = ROOT / ".cache" / "test-disk.json"


class _DiskWatch:
    def __init__(self) -> None:
        self.start = self.peak = shutil.disk_usage("/").used
        self.tests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self.peak = max(self.peak, shutil.disk_usage("/").used)

    def finish(self) -> None:
        """At exit, after pytest removed its own temporary directories, once the engine's
        collector has freed what the cleanup pruned (it runs a little later: measured at
        the session's end, a run seemed to leave 1.8 GB that was gone seconds after)."""
        self._stop.set()
        self._thread.join(timeout=5)
        end, deadline = shutil.disk_usage("/").used, time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(2.0)
            now = shutil.disk_usage("/").used
            if abs(now - end) < 10 << 20:
                break
            end = now
        self.peak = max(self.peak, end)
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "tests": self.tests,
            "start_bytes": self.start,
            "peak_bytes": self.peak,
            "end_bytes": end,
            "left_bytes": end - self.start,
        }
        DISK_RECORD.parent.mkdir(parents=True, exist_ok=True)
        DISK_RECORD.write_text(json.dumps(record, indent=1) + "\n")
        gb = 1e9
        sys.stdout.write(
            f"disk: {self.start / gb:.1f} GB used at the start, {self.peak / gb:.1f} GB at the "
            f"peak (+{(self.peak - self.start) / gb:.1f}), {end / gb:.1f} GB after the run's "
            f"cleanup (left behind: {(end - self.start) / gb:+.2f} GB); {DISK_RECORD.name}\n"
        )
        sys.stdout.flush()


_DISK: dict[str, _DiskWatch] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        _DISK["watch"] = _DiskWatch()


def images_to_remove() -> Path:
    """Where this run's tests list the images they created."""
    return Path(tempfile.gettempdir()) / f"omibuild-test-images-{os.environ['OMI_TEST_RUN']}"


def remember_image(*refs: str) -> None:
    """Images (every tag of their repositories) this run made: removed when the run ends."""
    with images_to_remove().open("a") as fh:
        fh.write("".join(f"{ref}\n" for ref in refs))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller removes everything once all have finished
    # the wheel, omibuild's venvs made from it and the strangers' training venvs
    # (tests/integration/strangers.py)
    shutil.rmtree(ROOT / ".cache" / "test-envs", ignore_errors=True)
    # BuildKit's exported test caches (tests that ask for a local cache directory)
    shutil.rmtree(ROOT / ".cache" / "test-buildkit", ignore_errors=True)
    _remove_images()
    if not _engine_used(session):
        return  # unit tests only: the engine, its cache and the registry are someone else's
    if os.environ.get("OMI_TEST_PRUNE_ENGINE") == "1" or SETUP_ENGINE.exists():
        # an engine that setup started (a fresh machine, CI) or CI's (.ci/run): the build
        # cache the run filled and the images its rebuilds left untagged, ~20 GB. An engine
        # that was there before setup is its owner's, and its cache makes their next build fast
        subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True, check=False)
        subprocess.run(["docker", "image", "prune", "-f"], capture_output=True, check=False)
        _empty_test_registry()
    watch = _DISK.get("watch")
    if watch is not None:  # measured at exit, after pytest's own temporary files are gone
        watch.tests = session.testscollected
        atexit.register(watch.finish)


def _engine_used(session: pytest.Session) -> bool:
    """Whether this run may have used the engine: an integration test was among its items
    (xdist's controller collects none: then unless `-m "not integration"` left them out).
    A unit-only run beside another run must not prune the engine that run is using."""
    if session.items:
        return any(item.get_closest_marker("integration") for item in session.items)
    return "not integration" not in (session.config.option.markexpr or "")


# setup's loopback registry (scripts/start-registry.sh): the tests push under omibuild-test/
REGISTRY_STATE = SETUP_ENGINE.parent / "registry"
REGISTRY_CONFIG = SETUP_ENGINE.parent / "registry.yml"


def _empty_test_registry() -> None:
    """The repositories the tests pushed to setup's registry, and then the blobs nothing
    references any more (the registry's own collector; it keeps no blob cache, and nothing
    pushes once the run has ended), and the revisions of what stays (the examples' registry
    caches) that a later push replaced. About 1.5 GB a run."""
    repositories = REGISTRY_STATE / "docker" / "registry" / "v2" / "repositories"
    if not REGISTRY_CONFIG.is_file() or not (repositories / "omibuild-test").is_dir():
        return
    shutil.rmtree(repositories / "omibuild-test", ignore_errors=True)
    collector = shutil.which("docker-registry") or shutil.which("registry")
    if collector:
        subprocess.run(
            # untagged: the caches' and images' revisions that a later push replaced
            [collector, "garbage-collect", "--delete-untagged", str(REGISTRY_CONFIG)],
            capture_output=True,
            timeout=600,
            check=False,
        )


def _remove_images() -> None:
    listing = images_to_remove()
    if not listing.exists():
        return
    remove_images(set(listing.read_text().split()))
    listing.unlink()


def remove_images(listed: set[str]) -> None:
    """Remove the images ``listed`` and every other tag of their repositories."""
    # every tag of a listed repository: the origin tag `apply` adds beside the one a test knows
    repositories = {_repository(ref) for ref in listed}
    if not repositories:
        return
    present = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}} {{.Tag}} {{.ID}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    refs = set(listed)
    for line in present:
        repository, tag, image_id = [*line.split(), "", "", ""][:3]
        if repository in repositories:
            # an image pulled by digest has no tag: it goes by its id
            refs.add(image_id if tag == "<none>" else f"{repository}:{tag}")
    ordered = sorted(refs)
    for start in range(0, len(ordered), 50):
        subprocess.run(
            ["docker", "image", "rm", "-f", *ordered[start : start + 50]],
            capture_output=True,
            check=False,
        )


def _repository(ref: str) -> str:
    """``host:5000/a/b:tag`` → ``host:5000/a/b`` (a ref without a tag is its repository)."""
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref
