"""Modzy/Chassis: v2 is gRPC ``ModzyModel`` (Status, Run, Shutdown) on port 45000 or
PSC_MODEL_PORT, with gRPC health and reflection; v1 is the REST form of the same three calls.

Each Run input item is one inference: its value (JSON, or text) holds one instance, a list of
instances, or {"instances": [...]}; the answer is ``results.json`` with the predictions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.faults import InputError, PredictError, detach
from omibuild.runtime.http import HTTPError, Metrics, endpoint, json_response, read_json
from omibuild.runtime.model import ModelService, to_jsonable
from omibuild.runtime.screen import shown_rows

SERVICE = "ModzyModel"
RESULTS = "results.json"
# ModelFeatures' formats: results.json's "explanation" (runtime/explain.py) and "drift"
# (runtime/drift.py) members, as docs/architecture.md describes them
EXPLANATION_FORMAT = "omibuild.explanation.v1+json"
DRIFT_FORMAT = "omibuild.drift.v1+json"


def instances_of(raw: bytes) -> list[Any]:
    try:
        value: Any = json.loads(raw)
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        try:
            return [raw.decode("utf-8")]
        except UnicodeDecodeError:
            raise InputError("input is neither JSON nor UTF-8 text") from None
    if isinstance(value, dict) and "instances" in value:
        value = value["instances"]
        if not isinstance(value, list):
            raise InputError("`instances` must be a list")
        return value
    if isinstance(value, list) and value and isinstance(value[0], list | dict):
        return value
    return [value]


def _instances(item: dict[str, bytes]) -> list[Any]:
    if not item:
        raise InputError("empty input item")
    return instances_of(item.get("input", next(iter(item.values()))))


def _failed(exc: Exception) -> tuple[bool, bytes]:
    return False, json.dumps({"error": str(detach(exc))}).encode()


FILE_JOB_ROOT = "/data"
MAX_JOB_FILES = 10_000


def _confined(root: Path, value: Any, field: str) -> Path:
    """A job directory that resolves (symlinks followed) to a directory under ``root``."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise HTTPError(400, f"file jobs need `{field}`: a directory under {root}")
    try:
        base = root.resolve(strict=True)
        path = (root / value).resolve(strict=True)  # an absolute value replaces root here
    except (OSError, RuntimeError):
        raise HTTPError(400, f"`{field}` must be an existing directory under {root}") from None
    if not path.is_relative_to(base) or not path.is_dir():
        raise HTTPError(403, f"`{field}` must be an existing directory under {root}")
    return path


def _job_files(directory: Path) -> list[str]:
    names = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                names.append(entry.name)
                if len(names) > MAX_JOB_FILES:
                    raise HTTPError(400, f"more than {MAX_JOB_FILES} files in one job")
    return sorted(names)


def _read_bounded(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than the limit of {limit} bytes")
    return data


def _write_result(path: Path, blob: bytes) -> None:
    """Never through a symlink someone left in the output directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _shutdown_soon() -> None:
    threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()


class ModzyAdapter:
    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None:
        self.service = service
        self.config = config
        self.metrics = metrics

    @property
    def http(self) -> bool:
        return self.config.protocol == "v1"

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"statusCode": status, "status": "Error", "message": message}

    def run_items(
        self, items: list[dict[str, bytes]], explain: bool = False, detect_drift: bool = False
    ) -> list[tuple[bool, bytes]]:
        """For the gRPC handler, which runs in gRPC's worker threads. ``explain`` and
        ``detect_drift`` are RunRequest's flags: each item's results.json then also holds its
        explanation, and the drift detector's status after the item. An image without one
        ignores its flag, as Status says (ModelFeatures' empty format), and predicts as before."""
        results = []
        for item in items:
            try:
                instances = _instances(item)
                predictions, screening = self.service.predict_blocking_screened(instances)
                answer: dict[str, Any] = {"predictions": to_jsonable(predictions)}
                if self.service.defense is not None:
                    answer["defense"] = shown_rows(screening)
                if explain and self.service.explainer is not None:
                    answer["explanation"] = self.service.explain_blocking(instances)
                if detect_drift and self.service.drift is not None:
                    answer["drift"] = self.service.drift.status()
                results.append((True, json.dumps(answer).encode()))
            except (InputError, PredictError) as exc:
                results.append(_failed(exc))
        return results

    async def arun_items(
        self, items: list[dict[str, bytes]], explain: bool = False, detect_drift: bool = False
    ) -> list[tuple[bool, bytes]]:
        """For the REST routes: each item's predict runs on the predict lane, off the loop."""
        results = []
        for item in items:
            try:
                instances = _instances(item)
                predictions, screening = await self.service.apredict_screened(instances)
                answer: dict[str, Any] = {"predictions": to_jsonable(predictions)}
                if self.service.defense is not None:
                    answer["defense"] = shown_rows(screening)
                if explain and self.service.explainer is not None:
                    answer["explanation"] = await self.service.aexplain(instances)
                if detect_drift and self.service.drift is not None:
                    answer["drift"] = self.service.drift.status()
                results.append((True, json.dumps(answer).encode()))
            except (InputError, PredictError) as exc:
                results.append(_failed(exc))
        return results

    def status(self) -> dict[str, Any]:
        ready = self.service.ready
        return {
            "status_code": 200 if ready else 503,
            "status": "OK" if ready else "UNAVAILABLE",
            "message": "Model Initialized Successfully."
            if ready
            else (self.service.load_error or "model is loading"),
        }

    # -- v1: REST ----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        ep = lambda route: endpoint(route, self.metrics, self.error_body)  # noqa: E731

        async def status(request: Request) -> Response:
            s = self.status()
            return json_response(
                {"statusCode": s["status_code"], "status": s["status"], "message": s["message"]},
                s["status_code"],
            )

        async def run(request: Request) -> Response:
            if not self.service.ready:
                raise HTTPError(503, "model is not ready")
            body = await read_json(request, self.config.max_body_bytes)
            if isinstance(body, dict) and body.get("type") == "file":
                return await self._run_files(body)
            items = body if isinstance(body, list) else [body]
            flags = {
                key: request.query_params.get(key, "").lower() in ("1", "true", "yes", "on")
                for key in ("explain", "detect_drift")
            }
            results = await self.arun_items(
                [{"input": json.dumps(i).encode()} for i in items], **flags
            )
            outputs = [json.loads(blob) for _, blob in results]
            failed = [o["error"] for (ok, _), o in zip(results, outputs, strict=True) if not ok]
            if failed:
                message = f"{len(failed)} of {len(outputs)} input(s) failed: {failed[0]}"
                return json_response({**self.error_body(400, message), "outputs": outputs}, 400)
            return json_response({"statusCode": 200, "status": "OK", "outputs": outputs})

        async def shutdown(request: Request) -> Response:
            _shutdown_soon()
            return json_response(
                {"statusCode": 202, "status": "OK", "message": "shutting down"}, 202
            )

        return [
            Route("/status", ep("status")(status)),
            Route("/run", ep("run")(run), methods=["POST"]),
            Route("/shutdown", ep("shutdown")(shutdown), methods=["POST"]),
        ]

    async def _run_files(self, body: dict[str, Any]) -> Response:
        """The Modzy file-job form: ``{"type": "file", "input": DIR, "output": DIR}``. Both
        directories must lie under OMI_FILE_JOB_ROOT (default /data, where the job's volumes
        are mounted); each regular file in ``input`` is one item, read, predicted and written
        as ``<stem>.results.json`` in ``output`` before the next is read."""
        root = Path(self.config.env.get("OMI_FILE_JOB_ROOT") or FILE_JOB_ROOT)
        src = _confined(root, body.get("input"), "input")
        dst = _confined(root, body.get("output"), "output")
        names = await asyncio.to_thread(_job_files, src)
        failed = 0
        for name in names:
            try:
                data = await asyncio.to_thread(
                    _read_bounded, src / name, self.config.max_body_bytes
                )
            except (OSError, ValueError) as exc:
                ok, blob = _failed(InputError(f"cannot read {name}: {_reason(exc)}"))
            else:
                ok, blob = (await self.arun_items([{"input": data}]))[0]
                del data
            try:
                await asyncio.to_thread(_write_result, dst / f"{Path(name).stem}.{RESULTS}", blob)
            except OSError:  # a symlink or a directory in its place: this item failed
                ok = False
            failed += not ok
        return json_response(
            {
                "statusCode": 200,
                "status": "OK",
                "message": f"{len(names)} input(s) processed, {failed} failed",
            }
        )

    # -- v2: gRPC ----------------------------------------------------------------------------
    def grpc_servicers(self) -> list[Any]:
        if self.config.protocol != "v2":
            return []
        import grpc

        from omibuild.runtime.grpc_methods import handler
        from omibuild.runtime.protos import MODZY

        def status(request: Any, context: Any) -> Any:
            s = self.status()
            response = MODZY["StatusResponse"](**s)
            response.model_info.model_name = self.service.name
            response.model_info.model_version = self.config.model_version
            response.model_info.model_author = ", ".join(self.config.document.authors)
            response.model_info.model_type = "grpc"
            response.model_info.source = "omibuild"
            response.inputs.add(
                filename="input",
                accepted_media_types=["application/json"],
                max_size=f"{self.config.max_body_bytes >> 20}M",
            )
            response.outputs.add(filename=RESULTS, media_type="application/json", max_size="64M")
            response.features.batch_size = 1
            response.resources.num_gpus = self.service.placement.gpus
            if self.config.document.explain:
                response.features.explanation_format = EXPLANATION_FORMAT
            if self.config.document.drift:
                response.features.drift_format = DRIFT_FORMAT
            # the spec's flag: set only where omi.yaml's defense is baked in (results.json's
            # "defense" member then screens each item's rows)
            response.features.adversarial_defense = bool(self.config.document.defense)
            return response

        def run(request: Any, context: Any) -> Any:
            if not self.service.ready:
                return MODZY["RunResponse"](
                    status_code=503, status="UNAVAILABLE", message="model is not ready"
                )
            items = [dict(item.input) for item in request.inputs]
            response = MODZY["RunResponse"](status_code=200, status="OK", message="")
            for ok, blob in self.run_items(items, request.explain, request.detect_drift):
                out = response.outputs.add(success=ok)
                out.output[RESULTS] = blob
            if not all(o.success for o in response.outputs):
                response.status_code, response.status = 400, "Error"
                response.message = "one or more inputs failed; see results.json of each output"
            return response

        def shutdown(request: Any, context: Any) -> Any:
            _shutdown_soon()
            return MODZY["ShutdownResponse"](
                status_code=200, status="OK", message="Model shutting down"
            )

        impl = {"Status": status, "Run": run, "Shutdown": shutdown}
        handlers = {m: handler(m, f, SERVICE, MODZY) for m, f in impl.items()}
        return [(SERVICE, grpc.method_handlers_generic_handler(SERVICE, handlers))]
