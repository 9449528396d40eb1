"""Predict off the event loop: dedicated threads fed by one queue, merging the requests
waiting behind one another into one predict call where the flavor is vectorised."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from omibuild.runtime.faults import detach


class PredictLane:
    """Predict off the event loop, on ``threads`` dedicated threads fed by one queue.

    A bare queue and ``call_soon_threadsafe`` cost less per request than
    ``run_in_executor``'s pool bookkeeping (about 5% of a small model's request).

    With ``coalesce_rows`` > 0, a thread that takes a request also takes the requests waiting
    behind it, up to that many rows, and runs them as one predict call on their concatenated
    rows, handing each request its own rows back. By default it takes only what is already
    waiting: batching that never waits for a batch to fill, adding no latency at low load and
    taking the queueing out of high load. ``max_wait_ms`` > 0 is adaptive batching
    (OMI_MAX_BATCH_SIZE, OMI_MAX_LATENCY_MS): the thread waits up to that long for more rows.
    Only for vectorised flavors without hooks; when a merged call fails or returns something
    without one result per row, each request runs on its own, so errors stay with the request
    that caused them.

    A request submitted with ``screen=True`` is screened by ``screener`` (omi.yaml's defense,
    runtime/screen.py) on the lane, before predict, and resolves to (outputs, its screening).
    Requests merged into one call are screened in one pass over their rows: the screening's
    cost is paid per call, not per request. A request the screener refuses (guard: reject)
    fails alone; the others still predict."""

    def __init__(
        self,
        predict: Callable[[Any], Any],
        threads: int,
        coalesce_rows: int,
        max_wait_ms: float = 0.0,
    ) -> None:
        self.predict = predict
        self.coalesce_rows = coalesce_rows
        self.max_wait = max_wait_ms / 1000 if coalesce_rows else 0.0
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.threads = threads  # started by the first request
        self.started = False
        self._start_lock = threading.Lock()
        self.coalesced = 0  # predict calls that served more than one request
        # screen(inputs) -> screening (counted) and refusal(screening, inputs) -> an error or
        # None: set once the model is loaded, when the image has a defense
        self.screener: Any = None

    def _start(self) -> None:
        with self._start_lock:
            if not self.started:
                for i in range(self.threads):
                    threading.Thread(
                        target=self._work, name=f"omi-predict-{i}", daemon=True
                    ).start()
                self.started = True

    def submit(self, inputs: Any, screen: bool = False, show: bool = True) -> asyncio.Future[Any]:
        """From the event loop: a future the loop resolves with the result ((outputs,
        screening) when ``screen``; ``show``: the client waits for the rows' p-values)."""
        if not self.started:
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put(_Job(loop, future, inputs, self._rows(inputs), screen, show))
        return future

    def call(self, inputs: Any, screen: bool = False, show: bool = True) -> Any:
        """From any other thread: wait for the result."""
        if not self.started:
            self._start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queue.put(_Job(None, future, inputs, self._rows(inputs), screen, show))
        return future.result()

    def _rows(self, inputs: Any) -> int | None:
        return _rows_of(inputs) if self.coalesce_rows else None

    def _work(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        while True:
            job = get()
            if job.rows is None:
                self._run_one(job)
                continue
            batch, later, rows = [job], [], job.rows
            deadline = time.monotonic() + self.max_wait
            while rows < self.coalesce_rows:
                try:
                    if self.max_wait:
                        more = get(timeout=max(0.0, deadline - time.monotonic()))
                    else:
                        more = get_nowait()
                except queue.Empty:
                    break
                if (
                    more.rows is not None
                    and more.screen == job.screen
                    and _compatible(job.inputs, more.inputs)
                ):
                    batch.append(more)
                    rows += more.rows
                else:
                    later.append(more)
            if len(batch) == 1:
                self._run_one(job)
            else:
                self._run_merged(batch, rows)
            for other in later:
                self._run_one(other)

    def _run_one(self, job: _Job) -> None:
        if job.screen and self._screened([job], job.inputs) == []:
            return
        job.run(self.predict)

    def _screened(self, batch: list[_Job], merged: Any) -> list[_Job]:
        """Screen ``merged`` (the batch's rows) once, hand each job its part, fail the jobs it
        refuses: the jobs left to predict."""
        try:
            screening = self.screener.screen(merged, show=any(job.show for job in batch))
        except Exception as exc:  # a team's hook that failed: every request of the call
            for job in batch:
                job.settle(None, detach(exc))
            return []
        left, start = [], 0
        for job in batch:
            rows = job.rows if job.rows is not None else 0
            part = screening
            if screening is not None and len(batch) > 1:
                part = screening.part(start, start + rows)
            start += rows
            refused = self.screener.refusal(part, job.inputs)
            if refused is not None:
                job.inputs = None
                job.settle(None, refused)
            else:
                job.screening = part
                left.append(job)
        return left

    def _merge(self, batch: list[_Job]) -> Any:
        first = batch[0].inputs
        if isinstance(first, list):
            return [row for job in batch for row in job.inputs]
        import numpy as np

        return np.concatenate([job.inputs for job in batch])

    def _run_merged(self, batch: list[_Job], rows: int) -> None:
        merged = self._merge(batch)
        if batch[0].screen:
            kept = self._screened(batch, merged)
            if len(kept) < len(batch):  # some refused: the rest as one call again
                if len(kept) <= 1:
                    for job in kept:
                        job.run(self.predict)
                    return
                batch, merged = kept, self._merge(kept)
                rows = sum(job.rows or 0 for job in kept)
        try:
            out = self.predict(merged)
            if not hasattr(out, "__getitem__") or len(out) != rows or isinstance(out, dict):
                raise TypeError("not one result per row")
        except Exception:  # each request reruns on its own, keeping its error
            for job in batch:
                job.run(self.predict)
            return
        self.coalesced += 1
        start = 0
        for job in batch:
            assert job.rows is not None
            job.settle(out[start : start + job.rows], None)
            start += job.rows


class _Job:
    """One request on the lane. ``loop`` is set for an asyncio future (resolved on its loop),
    None for a concurrent.futures one (resolved from the lane's thread)."""

    __slots__ = ("future", "inputs", "loop", "rows", "screen", "screening", "show")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        inputs: Any,
        rows: int | None,
        screen: bool = False,
        show: bool = True,
    ) -> None:
        self.loop, self.inputs, self.rows = loop, inputs, rows
        self.future: Any = future
        self.screen = screen  # resolves to (outputs, screening)
        self.show = show  # the client waits for the screening's p-values
        self.screening: Any = None

    def run(self, predict: Callable[[Any], Any]) -> None:
        inputs, self.inputs = self.inputs, None  # the job no longer holds the request's data
        result: Any = None
        error: BaseException | None = None
        try:
            result = predict(inputs)
        except BaseException as exc:  # handed to the waiting request, as a message only
            error = detach(exc)
        del inputs  # before the request is answered: nothing here outlives it
        self.settle(result, error)

    def settle(self, result: Any, error: BaseException | None) -> None:
        if error is None and self.screen:  # a screened request gets its rows' screening too
            result = (result, self.screening)
        # The job lets go of the future: the lane thread keeps its last job until the next
        # one, and the future comes to hold the error, its traceback and the request's frames.
        future, self.future = self.future, None
        if self.loop is None:
            _settle(future, result, error)
        else:
            self.loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    if future.done():  # the request was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _rows_of(inputs: Any) -> int | None:
    """Rows of a request that could join others: a non-empty 2-D+ array or a list of rows."""
    shape = getattr(inputs, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) >= 2 and shape[0] > 0 else None
    if isinstance(inputs, list) and inputs and all(isinstance(r, list) for r in inputs):
        return len(inputs)
    return None


def _compatible(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a[0]) == len(b[0])
    return bool(a.dtype == b.dtype and a.shape[1:] == b.shape[1:])
