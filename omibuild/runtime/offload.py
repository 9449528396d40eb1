"""Large request bodies are decoded in a helper process, so health probes stay fast.

``json.loads`` is one C call that holds the GIL from start to end: a thread does not help. A
57 MB V1 body of four-number rows takes 1.9 s to parse and 0.45 s more to become an array, and
every route of the process (liveness included) waits that long. Bodies of at least
``OMI_DECODE_PROCESS_BYTES`` (default 2 MiB, about 12 ms of parsing; 0 turns this off) are
sent instead to one spawned helper process per server process, which parses them and sends
back compact arrays. The event loop only copies bytes in and out.

A decoder is a module-level function ``(body, *args) -> value`` that raises ``InputError`` or
``HTTPError`` for bad input; it runs in place for small bodies and in the helper for large
ones, with the same result either way.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from omibuild.runtime import log
from omibuild.runtime.http import HTTPError

T = TypeVar("T")


class Offload:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._pool: ProcessPoolExecutor | None = None

    def _helper(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.threshold:
            try:
                # spawn, not fork: the server has threads (the model loader, the predict lane)
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            except OSError as exc:  # no /dev/shm for the queue's lock: decode in place
                log.log("warning", "decoding large bodies in place", reason=str(exc))
                self.threshold = 0
        return self._pool

    async def decode(self, fn: Callable[..., T], body: bytes, *args: Any) -> T:
        if not self.threshold or len(body) < self.threshold:
            return fn(body, *args)
        pool = self._helper()
        if pool is None:
            return fn(body, *args)
        try:
            future = pool.submit(fn, body, *args)
        except BrokenProcessPool:  # it died after its last body: start another for this one
            self._pool = None
            pool = self._helper()
            if pool is None:
                return fn(body, *args)
            future = pool.submit(fn, body, *args)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # the helper died (most likely the container's memory limit): the next large
            # body starts a new one, and this one is refused rather than retried
            self._pool = None
            raise HTTPError(
                503, "the request decoder ran out of memory; send a smaller body"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
