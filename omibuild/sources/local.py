"""A model at a path inside the model repository; its origin id is its content digest."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path, PurePosixPath

from omibuild.errors import SourceError
from omibuild.manifest.model import LocalSource, SourceSpec
from omibuild.progress import Progress
from omibuild.sources.base import ModelFile, ResolvedSource, model_digest
from omibuild.sources.metadata import model_metadata
from omibuild.store.cache import Cache
from omibuild.store.hashing import copy_and_hash

# Never model or code files: version control and tool state, virtual environments (also
# found by their pyvenv.cfg, whatever their name), and omibuild's own files, whose content
# changes with every plan (a model digest that covered omi.lock would never be stable).
NEVER_TAKEN = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".DS_Store",
    ".ipynb_checkpoints",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "*.pyc",
    "omi.yaml",
    "omi.yml",
    "omi.lock",
    "plan.json",
    "*.plan.json",
)


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    """A glob matches the whole relative path or any one of its parts."""
    parts = PurePosixPath(rel).parts
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatchcase(rel, pat) or any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def ignored(rel: str, patterns: tuple[str, ...]) -> bool:
    return _matches(rel, NEVER_TAKEN) or _matches(rel, patterns)


def walk(
    base: Path, root: Path, patterns: tuple[str, ...], include: tuple[str, ...] = ()
) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of every file, refusing escapes. With ``include``,
    only the files that match one of its globs."""
    root = root.resolve()
    if base.is_file():
        return [(base.name, base)]
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        current = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            full = current / d
            rel = full.relative_to(base).as_posix()
            if ignored(rel, patterns) or (full / "pyvenv.cfg").is_file():
                continue
            if full.is_symlink():
                _check_inside(full, root)
                found += [
                    (f"{rel}/{r}", p) for r, p in walk(full.resolve(), root, patterns, include)
                ]
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            full = current / name
            rel = full.relative_to(base).as_posix()
            if ignored(rel, patterns) or (include and not _matches(rel, include)):
                continue
            if full.is_symlink():
                _check_inside(full, root)
            try:
                mode = full.stat().st_mode
            except OSError as err:
                raise SourceError(f"{full}: cannot read: {err.strerror}") from None
            if not stat.S_ISREG(mode):  # a FIFO would block the build; a device never ends
                raise SourceError(
                    f"{full}: not a regular file (a FIFO, socket or device)",
                    hint="remove it, or leave it out with model.source.local.ignore",
                )
            found.append((rel, full))
    return sorted(found)


def _check_inside(path: Path, root: Path) -> None:
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        raise SourceError(f"{path}: a symlink loop", hint="remove the link") from None
    except OSError as err:
        raise SourceError(
            f"{path}: a symlink that leads nowhere ({err.strerror})", hint="remove the link"
        ) from None
    if not target.is_relative_to(root):
        raise SourceError(
            f"{path}: symlink points outside the model repository (to {target})",
            hint="copy the file into the repository",
        )


class LocalModelSource:
    def __init__(self, cache: Cache, progress: Progress) -> None:
        self.cache = cache
        self.progress = progress

    def resolve(self, spec: SourceSpec, root: Path) -> ResolvedSource:
        assert isinstance(spec, LocalSource)
        base = root / spec.path
        if not base.exists():
            raise SourceError(f"{base}: model path does not exist")
        entries = walk(base, root, spec.ignore, spec.include)
        if not entries:
            raise SourceError(
                f"{base}: no model files (after include and ignore patterns)",
                hint="check model.source.local.path, include and ignore in omi.yaml",
            )
        sizes = [p.stat().st_size for _, p in entries]
        with self.progress.task(f"hashing {spec.path}", sum(sizes)) as advance:
            digests = self.cache.hash_locals([p for _, p in entries], advance)
        self.cache.save()
        named = zip(entries, sizes, digests, strict=True)
        files_t = tuple(sorted(ModelFile(rel, n, d) for (rel, _), n, d in named))
        digest = model_digest(files_t)
        model_dir = base if base.is_dir() else base.parent
        requirements, flavor_hint, meta = model_metadata(model_dir)
        return ResolvedSource(
            kind="local",
            uri=f"file:{spec.path}",
            origin_id=digest,
            version=digest.removeprefix("sha256:")[:12],
            files=files_t,
            metadata=tuple(sorted({"path": spec.path, **meta}.items())),
            requirements=requirements,
            flavor_hint=flavor_hint,
            location=str(base),
        )

    @staticmethod
    def paths(resolved: ResolvedSource) -> list[Path]:
        """Where the model's files are (what fetch hard-links into a context)."""
        base = Path(resolved.location)
        return [base / f.path if base.is_dir() else base for f in resolved.files]

    def fetch(self, resolved: ResolvedSource, dest: Path) -> int:
        base = Path(resolved.location)
        for f in resolved.files:
            src = base / f.path if base.is_dir() else base
            target = dest / f.path
            try:
                # A hard link is the same inode the hash memo vouched for: no copy, no re-read.
                if self.cache.hash_local(src) != f.sha256:
                    raise SourceError(f"{src}: changed since it was resolved; run again")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, target)
            except OSError:
                if copy_and_hash(src, target) != f.sha256:
                    raise SourceError(f"{src}: changed while it was copied; run again") from None
        return 0
