"""omibuild cache [prune --keep SIZE] — what omibuild keeps on disk (source files, BuildKit
cache directories, build contexts, image layouts, model layer digests, scratch), with sizes
and last use, and what omibuild's steps hold of the engine's build cache; prune keeps the most
recently used within a size, and leaves BuildKit's cache directories (store/usage.py says
why, and why this is safe while builds run). apply prunes to `cache_max` by itself."""

from __future__ import annotations

import argparse
import sys

from omibuild.engine.images import engine_build_cache
from omibuild.errors import EXIT_OK, UsageError
from omibuild.reports.caches import LISTINGS, PRUNES
from omibuild.store.cache import Cache
from omibuild.store.usage import entries, prune
from omibuild.units import parse_size


def run(args: argparse.Namespace) -> int:
    cache = Cache(hold=False)  # a prune must be able to take the cache alone
    if args.action == "list":
        LISTINGS[args.format](str(cache.root), entries(cache), engine_build_cache(), sys.stdout)
        return EXIT_OK
    if args.keep is None:
        raise UsageError("cache prune needs --keep SIZE", hint="e.g. --keep 20GB, or --keep 0")
    try:
        keep = parse_size(args.keep)
    except ValueError as err:
        raise UsageError(f"--keep {err}") from None
    PRUNES[args.format](prune(cache, keep), sys.stdout, sys.stderr)
    return EXIT_OK
