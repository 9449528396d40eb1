"""Gather everything make_plan needs (the I/O edge before the pure planner)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from omibuild.errors import OmiError
from omibuild.manifest.model import LocalSource, Manifest
from omibuild.manifest.requirements import read_requirements
from omibuild.manifest.tables import TableError
from omibuild.planning.analysis import reduce
from omibuild.planning.plan import BuildInputs
from omibuild.settings import host_index_urls
from omibuild.sources.base import ModelFile, ResolvedSource
from omibuild.sources.local import walk
from omibuild.sources.remote import redact
from omibuild.sources.runtime import runtime_digest
from omibuild.store.cache import Cache


def code_files(m: Manifest, cache: Cache) -> tuple[ModelFile, ...]:
    if m.code_path is None:
        return ()
    base = m.root / m.code_path
    ignore = list(m.code_ignore)
    if isinstance(m.source, LocalSource):
        model = (m.root / m.source.path).resolve()
        if model.is_relative_to(base.resolve()):
            ignore.append(model.relative_to(base.resolve()).as_posix())
    files = [
        ModelFile(rel, path.stat().st_size, cache.hash_local(path))
        for rel, path in walk(base, m.root, tuple(ignore), m.code_include)
    ]
    cache.save()
    return tuple(sorted(files))


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


_NETWORK_URL = re.compile(r"^(?:(?:https?|ssh|git)://[^/\s]+/|[\w.-]+@[\w.-]+:)\S+$")


def public_source(url: str | None) -> str | None:
    """The git remote as the image's source label, if it names a place others can reach: a
    clone from a local path would put this machine's paths into the image."""
    if not url or not _NETWORK_URL.match(url):
        return None
    return redact(url)


def _analysis(m: Manifest) -> tuple[tuple[str, bytes], ...]:
    try:
        return reduce(m)
    except TableError as exc:  # the file changed since validation read it
        raise OmiError(f"{m.file.name}: {exc}", hint="fix the table and run again") from None


def gather(
    m: Manifest,
    source: ResolvedSource,
    cache: Cache,
    *,
    base_digest: Callable[[str], str | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> BuildInputs:
    env = os.environ if env is None else env
    lines: list[str] = []
    for rel in m.image.requirement_files:
        lines += read_requirements(m.root / rel)
    url = _git(m.root, "config", "--get", "remote.origin.url")
    # The last commit that touched the model repository: stable across unrelated commits.
    revision = _git(m.root, "log", "-1", "--format=%H", "--", ".")
    epoch = env.get("SOURCE_DATE_EPOCH")
    return BuildInputs(
        manifest=m,
        source=source,
        code=code_files(m, cache),
        requirement_lines=tuple(lines),
        git_url=public_source(url),
        git_revision=revision,
        base_digest=base_digest(m.image.base) if base_digest else None,
        source_date_epoch=int(epoch) if epoch and epoch.isdigit() else None,
        runtime_digest=runtime_digest(),
        analysis=_analysis(m),
        host_index_urls=tuple(host_index_urls(env)),
    )
