"""omibuild lock [FILE|DIR...] — resolve each manifest's model source and base image and write
omi.lock; --check only says whether each lock is current (for pre-commit and CI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omibuild.commands.apply import expand_targets
from omibuild.engine.buildx import BuildxExecutor
from omibuild.errors import EXIT_INVALID, EXIT_OK
from omibuild.manifest.validate import load_manifest
from omibuild.planning.pipeline import pin_base
from omibuild.progress import Progress
from omibuild.sources.lock import lock_drift, read_lock_file, write_lock
from omibuild.sources.resolve import resolve
from omibuild.store.cache import Cache


def run(args: argparse.Namespace) -> int:
    executor, cache, progress = BuildxExecutor(), Cache(), Progress()
    stale = 0
    for file in expand_targets(args.files):
        manifest = load_manifest(Path(file))
        lock = read_lock_file(manifest)  # once, for all that reads it
        resolved = resolve(manifest, cache, progress, update_lock=False, lock_file=lock)
        base = pin_base(manifest, executor.image_digest, lock=lock)
        path = lock.path
        drift = lock_drift(manifest, resolved, base, lock)
        if drift is None:
            print(f"{path}: up to date")
        elif args.check:
            print(f"{path}: out of date: {drift} (hint: run `omibuild lock`)", file=sys.stderr)
            stale += 1
        else:
            write_lock(manifest, resolved, base, lock)
            print(f"{path}: written ({drift})")
    return EXIT_INVALID if stale else EXIT_OK
