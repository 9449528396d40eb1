"""What `omibuild cache` says: the cache's entries (a table of kinds for a person, every
entry in JSON), and what a prune removed, kept, and left to a running build or the engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from omibuild.engine.images import EngineCache
from omibuild.store.usage import KINDS, CacheEntry, Pruned
from omibuild.units import human


def _table(rows: list[CacheEntry], title: str, out: TextIO) -> None:
    from rich.console import Console  # rich: a table a person reads
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for column in ("kind", "name", "size", "last used"):
        table.add_column(column, justify="right" if column == "size" else "left")
    now = time.time()
    for e in rows:
        table.add_row(e.kind, escape(e.name), human(e.size), _ago(now - e.last_use))
    Console(file=out).print(table)


def _ago(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f} {unit} ago"
    return "just now"


SUMMED = {"source file": "model file(s)", "build context": "context(s)", "scratch": "item(s)"}


def _by_kind(rows: list[CacheEntry]) -> list[CacheEntry]:
    """One row per BuildKit cache directory (the big ones, one per model); the many small
    entries of the other kinds summed into one row each."""
    out = [e for e in rows if e.kind not in SUMMED]
    for kind, noun in SUMMED.items():
        some = [e for e in rows if e.kind == kind]
        if some:
            size, newest = sum(e.size for e in some), max(e.last_use for e in some)
            out.append(CacheEntry(kind, f"{len(some)} {noun}", some[0].path.parent, size, newest))
    return sorted(out, key=lambda e: (KINDS.index(e.kind), -e.last_use))


def list_text(root: str, rows: list[CacheEntry], engine: EngineCache | None, out: TextIO) -> None:
    total = sum(e.size for e in rows)
    _table(_by_kind(rows), f"omibuild cache: {root}", out)
    out.write(
        f"{human(total)} in all; apply keeps it within cache_max (see the README); "
        "`omibuild cache prune --keep SIZE` keeps the most recently used\n"
    )
    if engine is None:
        out.write("the engine's build cache: not read (the engine does not answer)\n")
    else:
        out.write(
            f"the engine's build cache: {human(engine.omibuild)} in {engine.records} records of "
            f"omibuild's steps, {human(engine.total)} in all (the engine's garbage collector "
            "bounds it; `docker buildx prune` empties it)\n"
        )


def list_json(root: str, rows: list[CacheEntry], engine: EngineCache | None, out: TextIO) -> None:
    report = {
        "root": root,
        "entries": [e.to_dict() for e in rows],
        "engine_build_cache": None if engine is None else asdict(engine),
    }
    out.write(json.dumps(report, indent=2) + "\n")


def bounded_text(done: Pruned, cap: int, err: TextIO) -> None:
    """apply's one line when it pruned omibuild's cache back to its cap."""
    freed = sum(e.size for e in done.removed)
    if done.removed:
        err.write(
            f"omibuild: the cache was over cache_max ({human(cap)}): removed {human(freed)} "
            f"({len(done.removed)} least recently used entries)\n"
        )
    elif done.busy:
        err.write(
            f"omibuild: the cache is over cache_max ({human(cap)}), but another omibuild "
            "command is using it; the next apply prunes it\n"
        )


def prune_text(done: Pruned, out: TextIO, err: TextIO) -> None:
    freed = sum(e.size for e in done.removed)
    out.write(
        f"removed {len(done.removed)} entries ({human(freed)}); kept {len(done.kept)} "
        f"({human(sum(e.size for e in done.kept))})\n"
    )
    if done.engine:
        err.write(
            f"BuildKit cache directories are not pruned ({len(done.engine)}, "
            f"{human(sum(e.size for e in done.engine))}): the engine keeps records that point "
            "into them\n"
        )
    if done.busy:
        err.write(
            f"kept {len(done.busy)} more ({human(sum(e.size for e in done.busy))}) that a running "
            "build uses; prune again when it has finished\n"
        )


def prune_json(done: Pruned, out: TextIO, err: TextIO) -> None:
    report = {
        "removed": [e.to_dict() for e in done.removed],
        "kept": [e.to_dict() for e in done.kept],
        "busy": [e.to_dict() for e in done.busy],
        "not_pruned": [e.to_dict() for e in done.engine],
    }
    out.write(json.dumps(report, indent=2) + "\n")


LISTINGS: dict[str, Callable[[str, list[CacheEntry], EngineCache | None, TextIO], None]] = {
    "text": list_text,
    "json": list_json,
}
PRUNES: dict[str, Callable[[Pruned, TextIO, TextIO], None]] = {
    "text": prune_text,
    "json": prune_json,
}
