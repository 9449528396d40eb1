"""`omibuild cache`: what omibuild keeps, and pruning it to a size without breaking a build
that is running (store/usage.py)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omibuild.engine.images import EngineCache
from omibuild.store.cache import Cache
from omibuild.store.usage import bound, entries, prune
from omibuild.units import parse_size

DAY = 86400


def aged(path: Path, days: float) -> Path:
    stamp = time.time() - days * DAY
    for root, dirs, files in os.walk(path) if path.is_dir() else [(path.parent, [], [path.name])]:
        for name in [*dirs, *files]:
            os.utime(os.path.join(root, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))
    return path


def filled(root: Path) -> Cache:
    """A cache with two source files, two BuildKit cache directories and a context."""
    cache = Cache(root, hold=False)
    for name, size, days in (("a" * 64, 3000, 5), ("b" * 64, 1000, 1)):
        aged(_write(cache.blob_path(name), size), days)
    for model, size, days in (("old-model", 5000, 10), ("new-model", 4000, 0.1)):
        directory = root / "buildkit" / model
        _write(directory / "blobs" / "sha256" / "x", size)
        _write(directory / "index.json", 10)
        aged(directory, days)
    context = root / "contexts" / "0123456789abcdef"
    _write(context / "model" / "0" / "model.joblib", 2000)
    (context / "omi.json").write_text(json.dumps({"name": "churn"}))
    aged(context, 2)
    return cache


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_entries_list_every_kind_newest_first(tmp_path: Path) -> None:
    found = entries(filled(tmp_path / "cache"))
    assert [(e.kind, e.name) for e in found] == [
        ("build cache", "new-model"),
        ("source file", "b" * 12),
        ("build context", "churn"),
        ("source file", "a" * 12),
        ("build cache", "old-model"),
    ]
    sizes = {e.name: e.size for e in found}
    assert sizes["new-model"] == 4010 and sizes["churn"] > 2000


def test_hard_links_count_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", hold=False)
    blob = _write(cache.blob_path("c" * 64), 7000)
    context = tmp_path / "cache" / "contexts" / "k"
    (context / "model").mkdir(parents=True)
    os.link(blob, context / "model" / "a")
    os.link(blob, context / "model" / "b")
    [ctx] = [e for e in entries(cache) if e.kind == "build context"]
    assert ctx.size == 7000


def test_prune_keeps_the_newest_within_the_size(tmp_path: Path) -> None:
    cache = filled(tmp_path / "cache")
    done = prune(cache, 1000 + 2100)  # room for the newest file and the context
    assert {e.name for e in done.kept} == {"b" * 12, "churn"}
    assert {e.name for e in done.removed} == {"a" * 12}
    assert not done.busy
    assert not cache.blob_path("a" * 64).exists() and cache.blob_path("b" * 64).exists()
    # BuildKit's cache directories are never removed: the engine's records point into them
    assert {e.name for e in done.engine} == {"new-model", "old-model"}
    assert (tmp_path / "cache" / "buildkit" / "old-model").exists()


def test_prune_leaves_what_a_running_command_holds(tmp_path: Path) -> None:
    """Every omibuild command holds the cache shared while it runs: prune keeps what it
    would remove and says so, and removes it once the command has finished."""
    root = tmp_path / "cache"
    cache = filled(root)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from pathlib import Path\n"
            "from omibuild.store.cache import Cache\n"
            f"cache = Cache(Path({str(root)!r}))\n"  # as apply holds it
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = prune(cache, 0)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert done.removed == []
    assert {e.name for e in done.busy} == {"churn", "a" * 12, "b" * 12}
    assert cache.blob_path("a" * 64).exists()
    again = prune(cache, 0)  # the command has finished
    assert {e.name for e in again.removed} == {"churn", "a" * 12, "b" * 12}
    assert [e.kind for e in entries(cache)] == ["build cache", "build cache"]


def test_a_cache_holds_its_lock_shared_while_it_lives(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with open(cache.in_use_lock, "a") as fh:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)  # other commands share it
    del cache


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("20GB", 20 * 10**9), ("500MiB", 500 << 20), ("1.5g", 1_500_000_000), ("7", 7)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "20 parsecs"])
def test_sizes_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_the_listing_a_person_reads_has_a_row_for_every_kind(tmp_path: Path) -> None:
    """`omibuild cache` (text) groups by kind: each kind the cache holds, the plans' states
    among them, has its place in the table (a kind without one stopped the verb)."""
    import io

    from omibuild.reports.caches import LISTINGS

    cache = filled(tmp_path / "cache")
    aged(_write(cache.root / "plans" / f"{'c' * 64}.json.gz", 700), 3)
    aged(_write(cache.root / "tmp" / "half-written", 50), 4)
    found = entries(cache)
    assert {e.kind for e in found} >= {"plan states", "scratch", "build cache"}
    out = io.StringIO()
    LISTINGS["text"](str(cache.root), found, EngineCache(2_500_000_000, 40, 3_000_000_000), out)
    assert "plan states" in out.getvalue() and "in all;" in out.getvalue()
    assert (
        "the engine's build cache: 2.5 GB in 40 records of omibuild's steps, 3.0 GB in all"
        in out.getvalue()
    )
    out = io.StringIO()
    LISTINGS["json"](str(cache.root), found, None, out)
    assert json.loads(out.getvalue())["engine_build_cache"] is None


def test_an_apply_bounds_the_cache_to_its_cap_oldest_first(tmp_path: Path) -> None:
    """store/usage.py bound: nothing under the cap; over it, the least recently used go (the
    BuildKit directories stay, as in every prune), and a running command's use defers it."""
    cache = filled(tmp_path / "cache")  # prunable: 3000 + 1000 + 2000 (+ the index's bytes)
    assert bound(cache, 10_000) is None
    assert {e.path.name for e in entries(cache)} >= {"a" * 64, "b" * 64}
    done = bound(cache, 3100)
    assert done is not None
    assert [e.name for e in done.removed] == ["a" * 12]  # the oldest source file
    assert not cache.blob_path("a" * 64).exists() and cache.blob_path("b" * 64).exists()
    held = Cache(cache.root)  # another command holds the cache: nothing is removed
    busy = bound(cache, 0)
    assert busy is not None and not busy.removed and busy.busy
    held.release()


def test_the_cache_cap_is_a_setting(tmp_path: Path) -> None:
    from omibuild.errors import UsageError
    from omibuild.settings import cache_max

    config = tmp_path / "config.toml"
    assert cache_max({"OMIBUILD_CONFIG": str(config)}) == 10**10  # the default: 10 GB
    config.write_text('cache_max = "2GB"\n')
    assert cache_max({"OMIBUILD_CONFIG": str(config)}) == 2 * 10**9
    assert cache_max({"OMIBUILD_CONFIG": str(config), "OMIBUILD_CACHE_MAX": "500MiB"}) == 500 << 20
    config.write_text('cache_max = "lots"\n')
    with pytest.raises(UsageError) as err:
        cache_max({"OMIBUILD_CONFIG": str(config)})
    assert str(err.value) == (
        f"{config}: cache_max: 'lots' is not a size: use e.g. 20GB, 500MiB or 0"
    )
