"""omibuild cache [prune --keep SIZE] — what omibuild keeps on disk (source files, BuildKit
cache directories, build contexts, image layouts, model layer digests, scratch), with sizes
and last use; prune keeps the most
recently used within a size, and leaves BuildKit's cache directories (store/usage.py says
why, and why this is safe while builds run)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from omibuild.errors import EXIT_OK, UsageError
from omibuild.store.cache import Cache
from omibuild.store.usage import KINDS, Entry, entries, parse_size, prune
from omibuild.units import human


def _table(rows: list[Entry], title: str) -> None:
    from rich.console import Console  # rich: a table a person reads
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for column in ("kind", "name", "size", "last used"):
        table.add_column(column, justify="right" if column == "size" else "left")
    now = time.time()
    for e in rows:
        table.add_row(e.kind, escape(e.name), human(e.size), _ago(now - e.last_use))
    Console().print(table)


def _ago(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f} {unit} ago"
    return "just now"


SUMMED = {"source file": "model file(s)", "build context": "context(s)", "scratch": "item(s)"}


def _by_kind(rows: list[Entry]) -> list[Entry]:
    """One row per BuildKit cache directory (the big ones, one per model); the many small
    entries of the other kinds summed into one row each."""
    out = [e for e in rows if e.kind not in SUMMED]
    for kind, noun in SUMMED.items():
        some = [e for e in rows if e.kind == kind]
        if some:
            size, newest = sum(e.size for e in some), max(e.last_use for e in some)
            out.append(Entry(kind, f"{len(some)} {noun}", some[0].path.parent, size, newest))
    return sorted(out, key=lambda e: (KINDS.index(e.kind), -e.last_use))


def run(args: argparse.Namespace) -> int:
    cache = Cache(hold=False)  # a prune must be able to take the cache alone
    if args.action == "list":
        rows = entries(cache)
        if args.format == "json":
            report = {"root": str(cache.root), "entries": [e.to_dict() for e in rows]}
            print(json.dumps(report, indent=2))
            return EXIT_OK
        total = sum(e.size for e in rows)
        _table(_by_kind(rows), f"omibuild cache: {cache.root}")
        print(
            f"{human(total)} in all; `omibuild cache prune --keep SIZE` keeps the most "
            "recently used"
        )
        return EXIT_OK
    if args.keep is None:
        raise UsageError("cache prune needs --keep SIZE", hint="e.g. --keep 20GB, or --keep 0")
    try:
        keep = parse_size(args.keep)
    except ValueError as err:
        raise UsageError(f"--keep {err}") from None
    done = prune(cache, keep)
    freed = sum(e.size for e in done.removed)
    if args.format == "json":
        report = {
            "removed": [e.to_dict() for e in done.removed],
            "kept": [e.to_dict() for e in done.kept],
            "busy": [e.to_dict() for e in done.busy],
            "not_pruned": [e.to_dict() for e in done.engine],
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(
        f"removed {len(done.removed)} entries ({human(freed)}); kept {len(done.kept)} "
        f"({human(sum(e.size for e in done.kept))})"
    )
    if done.engine:
        print(
            f"BuildKit cache directories are not pruned ({len(done.engine)}, "
            f"{human(sum(e.size for e in done.engine))}): the engine keeps records that point "
            "into them",
            file=sys.stderr,
        )
    if done.busy:
        print(
            f"kept {len(done.busy)} more ({human(sum(e.size for e in done.busy))}) that a running "
            "build uses; prune again when it has finished",
            file=sys.stderr,
        )
    return EXIT_OK
