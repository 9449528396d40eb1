"""What remote sources share: retries with backoff, messages without credentials, and
publishing a downloaded directory into the cache."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from omibuild.errors import SourceError
from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache

T = TypeVar("T")
SECRET_ENV = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "DATABRICKS_TOKEN",
)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """Remove credentials from a message: URL user-info and the values of secret variables."""
    text = _USERINFO.sub("***@", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def host_of(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else uri


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:300]


class Transient(Exception):
    """Wraps an error worth retrying (unreachable, timeout, 5xx)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def with_retries(
    call: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Retry ``call`` on Transient with exponential backoff; re-raise the last cause."""
    for attempt in range(attempts):
        try:
            return call()
        except Transient as err:
            if attempt == attempts - 1:
                raise err.cause from None
            sleep(base_delay * (2**attempt))
    raise AssertionError("unreachable")


def publish_tree(cache: Cache, tree: Path, expected: Iterable[ModelFile] = ()) -> list[ModelFile]:
    """Move every file of a finished download into the blob store; returns what was there."""
    want = {f.path: f.sha256 for f in expected}
    files = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        size = path.stat().st_size
        sha = cache.publish(path, want.get(rel))
        files.append(ModelFile(rel, size, sha))
    return files


def link_downloaded(
    cache: Cache, missing: list[ModelFile], got: list[ModelFile], dest: Path, what: str
) -> int:
    """After a download was published: check it holds exactly the missing files, link them into
    dest, and return the bytes that had to be fetched."""
    by_path = {f.path: f for f in got}
    for f in missing:
        if by_path.get(f.path) != f:
            raise SourceError(
                f"{what}: {f.path} changed at the source since it was resolved",
                hint="its files differ from omi.lock; resolve again",
            )
    if fetch_from_cache(cache, missing, dest):
        raise SourceError(f"{what}: the cache lost files during the fetch; run again")
    return sum(f.size for f in missing)


def fetch_from_cache(cache: Cache, files: Iterable[ModelFile], dest: Path) -> list[ModelFile]:
    """Link verified blobs into dest; return the files that are missing or corrupt."""
    missing = []
    for f in files:
        if cache.has_blob(f.sha256, f.size):
            cache.link_blob(f.sha256, dest / f.path)
        else:
            missing.append(f)
    return missing
