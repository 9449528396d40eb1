"""The model service: verification, loading, hooks, and predict kept off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from omibuild.runtime import log
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.drift import DriftMonitor
from omibuild.runtime.explain import Explainer, ExplainError, ExplainInputError
from omibuild.runtime.flavors import FLAVORS, CustomFlavor, import_object
from omibuild.runtime.verify import verify_model

MAX_MESSAGE = 200  # characters of a library's error message that reach a reply or a log


def brief(exc: BaseException) -> str:
    """A library's message, first line, bounded: some (numpy's "could not convert string to
    float: '...'", a KeyError) carry the request's own data, which a reply must not echo."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def shown(value: object, limit: int = 60) -> str:
    """A value the client sent (a tensor name, a datatype, a version), as an error message
    quotes it: its repr, cut to ``limit`` characters. A reply carries a glimpse of the request
    at most, however long what it was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detach(exc: BaseException) -> BaseException:
    """The error without its traceback or chained errors. Their frames hold the request's data,
    and a traceback that reaches the frame holding the error is a cycle: freed only by a full
    collection, which hardly ever runs once the loaded heap is frozen (gc.freeze)."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc


def fault(kind: type[Exception], prefix: str, exc: BaseException) -> Exception:
    """``kind`` with a bounded message about ``exc``; ``exc`` is detached from its frames.
    Raise it ``from None``."""
    message = f"{prefix}: {type(exc).__name__}: {brief(exc)}"
    detach(exc)
    return kind(message)


def unexpected(exc: BaseException, **fields: Any) -> str:
    """Log an error no handler expected as one JSON line, detached from its frames, under a
    new request id; the id goes back to the client, so one line of the log answers for it."""
    rid = uuid.uuid4().hex[:16]
    log.error(
        "request failed", request_id=rid, error=f"{type(exc).__name__}: {brief(exc)}", **fields
    )
    detach(exc)
    return rid


class InputError(Exception):
    """The request's data does not fit the model (400)."""


class PredictError(Exception):
    """The model or a hook failed (500); the server stays up."""


class MissingModule(PredictError):
    """The model needs a module the image does not have (500, and the build says which)."""


class NotInImage(Exception):
    """The image was built without what the request asks for: an explainer, a drift
    detector (501)."""


# Import names of well-known distributions, spelled as PyPI spells them. Only these are ever
# named as a requirement: any other missing module may as well be the repository's own code.
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "mlflow": "mlflow-skinny",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    **{n: n for n in ("numpy", "scipy", "pandas", "joblib", "skops", "xgboost", "lightgbm",
                      "catboost", "torch", "transformers", "keras", "onnxruntime")},
}  # fmt: skip


def load_failure_line(exc: BaseException) -> str:
    """``model failed to load: <reason>`` with a hint where the fix is known."""
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", None):
        return f"model failed to load: {missing_module_line(exc)}"
    return f"model failed to load: {brief(exc) or repr(exc)}"


def missing_module_line(exc: ModuleNotFoundError) -> str:
    """``No module named 'x'`` and what to do: add the distribution where the import name is a
    well-known one, else list the repository's own module under code, or add the
    distribution that provides it."""
    line = brief(exc) or repr(exc)
    missing = getattr(exc, "name", None)
    if missing:
        top = missing.split(".")[0]
        if top in _DISTRIBUTIONS:
            dist = _DISTRIBUTIONS[top]
            return f"{line} (hint: add {dist} to image.requirements in omi.yaml and apply again)"
        return (
            f"{line} (hint: if {top} is your repository's own code, list it under code: in "
            "omi.yaml (omibuild init does); else add the distribution that provides it to "
            "image.requirements)"
        )
    return line


class ModelService:
    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.ready = False
        self.load_error: str | None = None
        self.preprocess: Callable[[Any], Any] | None = None
        self.postprocess: Callable[[Any], Any] | None = None
        flavor_cls = FLAVORS[config.flavor]
        self.flavor: Any = (
            flavor_cls(config.code_dir) if flavor_cls is CustomFlavor else flavor_cls()
        )
        self.stats: dict[str, Any] = {}
        # a list of rows reaches the model as one array (see predict): decoders may make it so
        self.takes_arrays = bool(
            self.flavor.vectorised and not config.raw.get("hooks", {}).get("preprocess")
        )
        mergeable = (
            self.flavor.vectorised
            and not config.raw.get("hooks", {}).get("preprocess")
            and not config.raw.get("hooks", {}).get("postprocess")
        )
        batching = mergeable and config.max_batch_size > 1
        # At most OMI_PREDICT_THREADS predict calls at once, whoever calls: the lane's threads
        # and gRPC's worker threads alike (a model that is not thread-safe keeps the default 1).
        self._slots = threading.BoundedSemaphore(config.predict_threads)
        self.lane = PredictLane(
            self._predict_in_slot,
            config.predict_threads,
            coalesce_rows=(config.max_batch_size if batching else config.coalesce_rows)
            if mergeable
            else 0,
            max_wait_ms=config.max_latency_ms if batching else 0.0,
        )
        self._ready_lock = threading.Lock()
        self._on_ready: list[Callable[[], None]] = []
        # checks run once the model is ready, off the path to readiness (outputs.learn is one);
        # one that raises stops the server as a failed load does
        self.after_ready: list[Callable[[ModelService], None]] = []
        # each output's name, datatype and shape (V2 metadata), once known
        self.outputs: list[dict[str, Any]] | None = None
        # baked by the build (omi.yaml's explain and drift): made by load()
        self.explainer: Explainer | None = None
        self.drift: DriftMonitor | None = None

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the model is loaded: now if it is, else from the load thread."""
        with self._ready_lock:
            if not self.ready:
                self._on_ready.append(callback)
                return
        callback()

    @property
    def name(self) -> str:
        return self.config.model_name

    def load(self) -> None:
        """Verify, import hooks, load the model. Errors are kept for readiness to report."""
        try:
            start = time.perf_counter()
            if self.config.verify:
                self.stats["verify"] = verify_model(
                    self.config.model_dir, self.config.raw["model"]["files"]
                )
                log.info("model files verified", **self.stats["verify"])
            hooks = self.config.raw.get("hooks", {})
            if hooks.get("preprocess"):
                self.preprocess = import_object(hooks["preprocess"], self.config.code_dir)
            if hooks.get("postprocess"):
                self.postprocess = import_object(hooks["postprocess"], self.config.code_dir)
            self.flavor.load(self.config.model_dir, self.config.raw)
            self.explainer = Explainer.from_config(
                self.config.raw, self.config.analysis_dir, self.config.code_dir
            )
            self.drift = DriftMonitor.from_config(self.config.raw, self.config.analysis_dir)
            self.stats["load_seconds"] = round(time.perf_counter() - start, 4)
            # Everything loaded so far (the libraries' modules, the model) lives as long as the
            # process. Frozen, the cyclic GC stops re-scanning it: a full collection of a sklearn
            # process drops from ~40 ms, a stall of every request in flight, to well under 1 ms.
            gc.freeze()
            self.stats["gc_frozen_objects"] = gc.get_freeze_count()
            with self._ready_lock:
                self.ready = True
                callbacks, self._on_ready = self._on_ready, []
            for callback in callbacks:
                callback()
            log.info("model ready", model=self.name, flavor=self.config.flavor, **self.stats)
            if self.drift is not None:
                self.drift.start()
            for check in self.after_ready:
                check(self)
        except Exception as exc:
            self.ready = False
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load", error=self.load_error)
            raise

    def load_in_background(
        self, on_failure: Callable[[str], None] | None = None
    ) -> threading.Thread:
        """Load on a thread; a failure calls ``on_failure`` with the one-line reason (the server
        then stops, so an orchestrator sees a crash rather than a pod that is never ready)."""

        def target() -> None:
            try:
                self.load()
            except Exception as exc:
                if on_failure is not None:
                    on_failure(load_failure_line(exc))

        thread = threading.Thread(target=target, name="omi-load", daemon=True)
        thread.start()
        return thread

    def predict(self, inputs: Any) -> Any:
        """Synchronous: hooks around the flavor's predict. Runs in a worker thread."""
        if self.preprocess is not None:
            try:
                inputs = self.preprocess(inputs)
            except Exception as exc:
                raise fault(PredictError, "preprocess hook failed", exc) from None
        elif self.flavor.vectorised and isinstance(inputs, list):
            inputs = as_array(inputs)
        try:
            outputs = self.flavor.predict(inputs)
        except ModuleNotFoundError as exc:  # not the input's fault: the image lacks a module
            raise MissingModule(missing_module_line(exc)) from None
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise fault(InputError, "the model rejected the input", exc) from None
        except Exception as exc:
            if self._rejects(exc):  # the framework's own word for a wrong input
                raise fault(InputError, "the model rejected the input", exc) from None
            raise fault(PredictError, "predict failed", exc) from None
        if self.postprocess is not None:
            try:
                outputs = self.postprocess(outputs)
            except Exception as exc:
                raise fault(PredictError, "postprocess hook failed", exc) from None
        return outputs

    def _rejects(self, exc: Exception) -> bool:
        """Whether the flavor says ``exc`` means the input was wrong: one of its framework's
        input errors (``rejected``), or what its ``rejects`` recognises."""
        if isinstance(exc, getattr(self.flavor, "rejected", ())):
            return True
        rejects = getattr(self.flavor, "rejects", None)
        return bool(rejects(exc)) if rejects is not None else False

    async def apredict(self, inputs: Any) -> Any:
        """From the event loop: predict on the lane. An answered request's rows are queued for
        drift accounting (a put: the tests run on the monitor's own thread)."""
        outputs = await self.lane.submit(inputs)
        if self.drift is not None:
            self.drift.offer(inputs)
        return outputs

    def predict_blocking(self, inputs: Any) -> Any:
        """From a gRPC worker thread. With adaptive batching on, through the lane, so gRPC and
        REST requests batch together; otherwise right here, which spares a thread hop."""
        outputs = self.lane.call(inputs) if self.lane.max_wait else self._predict_in_slot(inputs)
        if self.drift is not None:
            self.drift.offer(inputs)
        return outputs

    def explain_blocking(self, instances: Any) -> dict[str, Any]:
        """An explanation of ``instances``, in a predict slot (it calls the model many times)."""
        if self.explainer is None:
            raise NotInImage(f"model {self.name!r} has no explainer (omi.yaml has no explain)")
        with self._slots:
            # what infer would refuse, explain refuses the same way: the rows go through the
            # one predict path first (a 400 names what is wrong), and only then to SHAP
            self.predict(instances)
            try:
                return self.explainer.explain(self.flavor, instances, self.predict)
            except ExplainError as exc:
                raise PredictError(str(exc)) from None
            except ExplainInputError as exc:
                raise InputError(str(exc)) from None

    async def aexplain(self, instances: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.explain_blocking, instances)

    def _predict_in_slot(self, inputs: Any) -> Any:
        with self._slots:
            return self.predict(inputs)


def as_array(rows: list[Any]) -> Any:
    """Rows as one array, as vectorised flavors take them; rows that are not numbers stay rows."""
    import numpy as np

    try:
        array = np.asarray(rows)
    except ValueError as exc:  # ragged rows
        raise fault(InputError, "instances do not form a tensor", exc) from None
    if array.dtype == object:
        return rows
    return array


def to_jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):  # pandas
        return value.to_dict(orient="records")
    return value


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
    that caused them."""

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

    def _start(self) -> None:
        with self._start_lock:
            if not self.started:
                for i in range(self.threads):
                    threading.Thread(
                        target=self._work, name=f"omi-predict-{i}", daemon=True
                    ).start()
                self.started = True

    def submit(self, inputs: Any) -> asyncio.Future[Any]:
        """From the event loop: a future the loop resolves with the result."""
        if not self.started:
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put(_Job(loop, future, inputs, self._rows(inputs)))
        return future

    def call(self, inputs: Any) -> Any:
        """From any other thread: wait for the result."""
        if not self.started:
            self._start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queue.put(_Job(None, future, inputs, self._rows(inputs)))
        return future.result()

    def _rows(self, inputs: Any) -> int | None:
        return _rows_of(inputs) if self.coalesce_rows else None

    def _work(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        while True:
            job = get()
            if job.rows is None:
                job.run(self.predict)
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
                if more.rows is not None and _compatible(job.inputs, more.inputs):
                    batch.append(more)
                    rows += more.rows
                else:
                    later.append(more)
            if len(batch) == 1:
                job.run(self.predict)
            else:
                self._run_merged(batch, rows)
            for other in later:
                other.run(self.predict)

    def _run_merged(self, batch: list[_Job], rows: int) -> None:
        first = batch[0].inputs
        if isinstance(first, list):
            merged: Any = [row for job in batch for row in job.inputs]
        else:
            import numpy as np

            merged = np.concatenate([job.inputs for job in batch])
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

    __slots__ = ("future", "inputs", "loop", "rows")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        inputs: Any,
        rows: int | None,
    ) -> None:
        self.loop, self.inputs, self.rows = loop, inputs, rows
        self.future: Any = future

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
