"""The model service: verification, loading, hooks, and predict kept off the event loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

from omibuild.runtime import log
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.device import Placement
from omibuild.runtime.drift import DriftMonitor
from omibuild.runtime.explain import Explainer, ExplainError, ExplainInputError
from omibuild.runtime.faults import (
    InputError,
    MissingModule,
    NotInImage,
    PredictError,
    SignatureMismatch,
    fault,
    load_failure_line,
    missing_module_line,
)
from omibuild.runtime.flavors import FLAVORS, CustomFlavor, import_object
from omibuild.runtime.lane import PredictLane
from omibuild.runtime.screen import DefenseMonitor, Screening
from omibuild.runtime.verify import verify_model


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
        self.takes_arrays = bool(self.flavor.vectorised and not config.document.hooks.preprocess)
        mergeable = (
            self.flavor.vectorised
            and not config.document.hooks.preprocess
            and not config.document.hooks.postprocess
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
        self.defense: DefenseMonitor | None = None
        self.placement = Placement()  # the device the flavor put the model on (device.py)

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
                    self.config.model_dir, self.config.document.files
                )
                log.info("model files verified", **self.stats["verify"])
            hooks = self.config.document.hooks
            if hooks.preprocess:
                self.preprocess = import_object(hooks.preprocess, self.config.code_dir)
            if hooks.postprocess:
                self.postprocess = import_object(hooks.postprocess, self.config.code_dir)
            # a flavor (and a user's predictor) reads omi.json as the JSON it is
            self.flavor.load(self.config.model_dir, self.config.raw)
            self.placement = getattr(self.flavor, "placement", None) or Placement()
            self.stats["device"] = self.placement.device
            if self.placement.reason:  # a CUDA image where no GPU serves: said once
                log.warning("built for CUDA, serving on the CPU", reason=self.placement.reason)
            self.explainer = Explainer.from_config(
                self.config.document, self.config.analysis_dir, self.config.code_dir
            )
            self.drift = DriftMonitor.from_config(self.config.document, self.config.analysis_dir)
            self.defense = DefenseMonitor.from_config(
                self.config.document, self.config.analysis_dir, self.config.code_dir
            )
            self.lane.screener = self.defense
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
            signature = isinstance(exc, SignatureMismatch)  # MLflow's scoring says so apart
            raise fault(
                InputError, "the model rejected the input", exc, signature=signature
            ) from None
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
        return (await self.apredict_screened(inputs, show=False))[0]

    async def apredict_screened(
        self, inputs: Any, show: bool = True
    ) -> tuple[Any, Screening | None]:
        """apredict, and the defense's screening of the rows (omi.yaml's defense), which the
        lane runs before predict: under guard: reject a violating row never reaches the model.
        ``show``: the client asked for the rows' p-values (else they come later, DefenseMonitor)."""
        screening = None
        if self.defense is not None:
            outputs, screening = await self.lane.submit(inputs, screen=True, show=show)
        else:
            outputs = await self.lane.submit(inputs)
        if self.drift is not None:
            self.drift.offer(inputs)
        return outputs, screening

    def predict_blocking(self, inputs: Any, client: bool = True) -> Any:
        """From a gRPC worker thread. With adaptive batching on, through the lane, so gRPC and
        REST requests batch together; otherwise right here, which spares a thread hop.
        ``client``: false for the runtime's own calls, which the defense does not screen."""
        return self.predict_blocking_screened(inputs, client, show=False)[0]

    def predict_blocking_screened(
        self, inputs: Any, client: bool = True, show: bool = True
    ) -> tuple[Any, Screening | None]:
        screening = None
        if self.defense is None or not client:
            outputs = (
                self.lane.call(inputs) if self.lane.max_wait else self._predict_in_slot(inputs)
            )
        elif self.lane.max_wait:
            outputs, screening = self.lane.call(inputs, screen=True, show=show)
        else:
            screening = self.defense.screen(inputs, show=show)
            refused = self.defense.refusal(screening, inputs)
            if refused is not None:
                raise refused
            outputs = self._predict_in_slot(inputs)
        if self.drift is not None:
            self.drift.offer(inputs)
        return outputs, screening

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
