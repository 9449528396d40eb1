"""A content-addressed cache of model files.

Layout under ``$OMIBUILD_CACHE_DIR`` (default ``$XDG_CACHE_HOME/omibuild``)::

    blobs/sha256/<hex>     verified, read-only model files
    index/<key>.json       remote reference → resolved file list (so a re-fetch downloads 0 bytes)
    tmp/                   downloads in progress (same filesystem, so publishing is a rename)
    locks/                 flock files serialising fetches of one key
    stat.json              (path, size, mtime, inode) → sha256 memo for local files

Writes are atomic (temporary file, verify, rename). Every use of a blob re-checks its digest,
so a corrupt or tampered entry is dropped and fetched again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

from omibuild.store.hashing import linked_here, sha256_file

STALE_TMP_SECONDS = 3600


def default_cache_dir() -> Path:
    explicit = os.environ.get("OMIBUILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "omibuild"


class CorruptBlob(Exception):
    pass


class Cache:
    def __init__(self, root: Path | None = None, *, hold: bool = True) -> None:
        self.root = root or default_cache_dir()
        for sub in ("blobs/sha256", "index", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Held shared for this object's life: `omibuild cache prune` removes source files,
        # contexts and scratch only when it can take this lock alone (store/usage.py).
        self._in_use = None
        if hold:
            self._in_use = open(self.in_use_lock, "a")  # noqa: SIM115 (held, not scoped)
            fcntl.flock(self._in_use, fcntl.LOCK_SH)
        self._stat_memo: dict[str, list[Any]] | None = None
        self._stat_dirty = False
        self._sweep_tmp()

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        """Stop holding the cache: this object is done with it (a prune may then take it)."""
        if getattr(self, "_in_use", None) is not None:
            self._in_use.close()  # type: ignore[union-attr]
            self._in_use = None

    @property
    def in_use_lock(self) -> Path:
        return self.root / "locks" / "in-use.lock"

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has_blob(self, sha256: str, size: int, *, verify: bool = True) -> bool:
        """True if a verified blob exists. A corrupt one is removed (and reported false)."""
        path = self.blob_path(sha256)
        try:
            if path.stat().st_size != size:
                raise CorruptBlob
            if verify and sha256_file(path) != sha256:
                raise CorruptBlob
        except FileNotFoundError:
            return False
        except CorruptBlob:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        return True

    def publish(self, tmp_file: Path, expected: str | None = None) -> str:
        """Hash a finished download and move it into the blob store; returns its sha256."""
        actual = sha256_file(tmp_file)
        if expected is not None and actual != expected:
            tmp_file.unlink()
            raise CorruptBlob(f"expected sha256 {expected}, got {actual}")
        tmp_file.chmod(0o444)
        os.replace(tmp_file, self.blob_path(actual))
        return actual

    def link_blob(self, sha256: str, dest: Path) -> None:
        link_or_copy(self.blob_path(sha256), dest)

    @contextlib.contextmanager
    def tmp_dir(self) -> Iterator[Path]:
        """A scratch directory on the cache's filesystem, always removed."""
        path = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _sweep_tmp(self) -> None:
        """Remove leftovers of killed downloads (never visible as entries)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    # -- index of remote references --------------------------------------------------------
    def _index_path(self, key: str) -> Path:
        return self.root / "index" / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def get_index(self, key: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._index_path(key).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if data.get("key") == key else None

    def put_index(self, key: str, value: dict[str, Any]) -> None:
        atomic_write(self._index_path(key), json.dumps({**value, "key": key}, sort_keys=True))

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Serialise work on one key across processes (two concurrent fetches are safe)."""
        path = self.root / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
        with open(path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- local-file hash memo ---------------------------------------------------------------
    def hash_local(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
        """sha256 of a local file, skipping the read when (size, mtime, inode) are unchanged."""
        st = path.stat()
        memo = self._memo()
        key = str(path.resolve())
        sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        hit = memo.get(key)
        if hit and hit[:4] == sig:
            return str(hit[4])
        digest = sha256_file(path, on_bytes)
        memo[key] = [*sig, digest]
        self._stat_dirty = True
        return digest

    def relinked(self, path: Path, before: os.stat_result) -> None:
        """omibuild's own hard links to ``path`` (a staged context's, made or removed since
        ``before``) moved its ctime and nothing else: same inode, size and mtime, and a write
        to a file would move its mtime. The memo and this process's read (store/hashing.py
        READ_HERE) keep vouching for it; else every apply after a build hashed a 1 GiB model
        again (0.4-0.7 s)."""
        try:
            after = path.stat()
        except OSError:
            return
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            return
        linked_here(before, after)
        memo = self._memo()
        key = str(path.resolve())
        hit = memo.get(key)
        sig = [before.st_size, before.st_mtime_ns, before.st_ino, before.st_ctime_ns]
        if hit and hit[:4] == sig and after.st_ctime_ns != before.st_ctime_ns:
            memo[key] = [*sig[:3], after.st_ctime_ns, hit[4]]
            self._stat_dirty = True

    def hash_locals(
        self, paths: list[Path], on_bytes: Callable[[int], None] | None = None
    ) -> list[str]:
        """sha256 of each file (as hash_local), files read on as many threads as there are
        cores: hashlib lets go of the GIL, so a sharded model hashes in about half the time on
        two cores (1 GiB in 8 shards: 1.3 s on one thread, 0.7 s on two, measured here)."""
        workers = min(len(paths), os.cpu_count() or 1)
        if workers <= 1:
            return [self.hash_local(p, on_bytes) for p in paths]
        self._memo()  # loaded once, before the threads share it
        lock = threading.Lock()

        def counted(n: int) -> None:
            with lock:
                on_bytes(n)  # type: ignore[misc]

        with futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: self.hash_local(p, on_bytes and counted), paths))

    def forget_hashes(self) -> None:
        """Drop the stat memo: every local file is hashed anew on its next use."""
        self._stat_memo, self._stat_dirty = {}, False
        with self.lock("stat.json"), contextlib.suppress(FileNotFoundError):
            (self.root / "stat.json").unlink()

    def _memo(self) -> dict[str, list[Any]]:
        if self._stat_memo is None:
            try:
                self._stat_memo = json.loads((self.root / "stat.json").read_text("utf-8"))
            except (OSError, ValueError):
                self._stat_memo = {}
        return self._stat_memo

    def save(self) -> None:
        if self._stat_dirty and self._stat_memo is not None:
            with self.lock("stat.json"):
                try:
                    current = json.loads((self.root / "stat.json").read_text("utf-8"))
                except (OSError, ValueError):
                    current = {}
                current.update(self._stat_memo)
                atomic_write(self.root / "stat.json", json.dumps(current))
            self._stat_dirty = False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write through a temporary file and a rename. The file gets the permissions any new file
    gets under the umask (0644 by default): mkstemp's 0600 would hide omi.lock and saved plans
    from a team's other users and tools."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # read per write: a test or a caller may change it
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as out:
                out.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
