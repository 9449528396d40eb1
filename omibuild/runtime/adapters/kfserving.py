"""KServe: the V1 protocol and the V2 Open Inference Protocol (REST here, gRPC in grpc_v2)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from omibuild import __version__
from omibuild.runtime.adapters.kserve import (
    EXTENSIONS,
    HEADER_KEY,
    defense_outputs,
    outputs_of,
    wants_defense,
)
from omibuild.runtime.codec import HEADER, decode_v2_body, encode_output, json_document, parameters
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.faults import InputError, NotInImage, shown
from omibuild.runtime.http import (
    HTTPError,
    Metrics,
    Payload,
    RawHandler,
    endpoint,
    json_response,
    read_body,
    require_ready,
)
from omibuild.runtime.model import ModelService, as_array, to_jsonable
from omibuild.runtime.offload import Offload
from omibuild.runtime.screen import shown_rows


class KServeAdapter:
    http = True

    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None:
        self.service = service
        self.config = config
        self.metrics = metrics
        self.offload = Offload(config.decode_process_bytes)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    def _ep(self, route: str) -> Any:
        return endpoint(route, self.metrics, self.error_body)

    def _model(self, name: str, version: str | None = None) -> None:
        if name != self.service.name:
            raise HTTPError(
                404, f"model {shown(name)} not found; this server has {self.service.name!r}"
            )
        served = self.config.model_version
        if version is not None and version != served:
            raise HTTPError(
                404, f"model {shown(name)} has no version {shown(version)}; it serves {served!r}"
            )

    # -- V1 --------------------------------------------------------------------------------
    def v1_routes(self) -> list[BaseRoute]:
        async def root(request: Request) -> Response:
            return json_response({"status": "alive"})

        async def models(request: Request) -> Response:
            return json_response({"models": [self.service.name]})

        async def model(request: Request) -> Response:
            target = request.path_params["target"]
            name, _, verb = target.partition(":")
            self._model(name)
            if request.method == "GET":
                if verb:
                    raise HTTPError(405, f"use POST for :{verb}")
                return json_response(
                    {"name": name, "ready": self.service.ready}, 200 if self.service.ready else 503
                )
            if verb == "explain":
                return await self._explain(request, v1_instances)
            if verb != "predict":
                raise HTTPError(404, f"unknown verb {shown(verb)}: use :predict or :explain")
            require_ready(self.service)
            body = await read_body(request, self.config.max_body_bytes)
            instances = await self.offload.decode(v1_instances, body, self.service.takes_arrays)
            if self.service.defense is not None and _asks_defense(request):
                predictions, screening = await self.service.apredict_screened(instances)
                return json_response(
                    {"predictions": to_jsonable(predictions), "defense": shown_rows(screening)}
                )
            predictions = await self.service.apredict(instances)
            return json_response({"predictions": to_jsonable(predictions)})

        return [
            Route("/", self._ep("v1_root")(root)),
            Route("/v1/models", self._ep("v1_models")(models)),
            Route("/v1/models/{target}", self._ep("v1_model")(model), methods=["GET", "POST"]),
        ]

    async def _explain(self, request: Request, decoder: Any) -> Response:
        """V1 ``:explain`` and the V2 ``/explain`` extension: the body as the protocol's
        predict takes it, answered with the baked explainer's explanation."""
        if self.service.ready and self.service.explainer is None:
            raise HTTPError(501, f"model {self.service.name!r} has no explainer")
        require_ready(self.service)
        body = await read_body(request, self.config.max_body_bytes)
        instances = await self.offload.decode(decoder, body, True)
        try:
            document = await self.service.aexplain(instances)
        except NotInImage as exc:
            raise HTTPError(501, str(exc)) from None
        return json_response({"model_name": self.service.name, **document})

    # -- V2 (Open Inference Protocol) ------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        # the model's signature where it has one (MLflow), else what the example shows
        document = self.config.document
        inputs = document.inputs or inputs_of_example(document.example)
        metadata: dict[str, Any] = {
            "name": self.service.name,
            "versions": [self.config.model_version],
            "platform": f"omibuild-{self.config.flavor}",
            "inputs": inputs,
            # learnt from the example input by the build, checked at start-up (outputs.py)
            "outputs": self.service.outputs or [],
        }
        if self.service.ready:  # where the model runs (cpu, cuda:0), once it is loaded there
            metadata["parameters"] = {"device": self.service.placement.device}
        return metadata

    async def infer_arrays(
        self, arrays: dict[str, np.ndarray], defense: bool = False
    ) -> dict[str, Any]:
        """The model's named outputs, and with ``defense`` the omi_defense_* ones."""
        model_input: Any = next(iter(arrays.values())) if len(arrays) == 1 else arrays
        if defense:
            result, screening = await self.service.apredict_screened(model_input)
            return outputs_of(result) | defense_outputs(screening)
        return outputs_of(await self.service.apredict(model_input))

    def v2_routes(self) -> list[BaseRoute]:
        async def live(request: Request) -> Response:
            return json_response({"live": True})

        async def ready(request: Request) -> Response:
            return json_response({"ready": self.service.ready}, 200 if self.service.ready else 503)

        async def server(request: Request) -> Response:
            return json_response(
                {"name": "omibuild", "version": __version__, "extensions": self.extensions()}
            )

        async def explain(request: Request) -> Response:
            self._model(request.path_params["name"], request.path_params.get("version"))
            return await self._explain(request, v2_instances)

        async def model_meta(request: Request) -> Response:
            self._model(request.path_params["name"], request.path_params.get("version"))
            return json_response(self.metadata())

        async def model_ready(request: Request) -> Response:
            self._model(request.path_params["name"], request.path_params.get("version"))
            return json_response(
                {"name": self.service.name, "ready": self.service.ready},
                200 if self.service.ready else 503,
            )

        async def infer(request: Request) -> Response:
            self._model(request.path_params["name"], request.path_params.get("version"))
            body = await read_body(request, self.config.max_body_bytes)
            status, payload, media_type, extra = await self.v2_infer(
                request.path_params["name"], body, request.headers.get(HEADER)
            )
            return Response(
                payload,
                status,
                headers={k.decode(): v.decode() for k, v in extra},
                media_type=media_type,
            )

        routes: list[BaseRoute] = []
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(prefix, self._ep("v2_model_metadata")(model_meta)),
                Route(prefix + "/ready", self._ep("v2_model_ready")(model_ready)),
                Route(prefix + "/infer", self._ep("v2_infer")(infer), methods=["POST"]),
                Route(prefix + "/explain", self._ep("v2_explain")(explain), methods=["POST"]),
            ]
        return [
            Route("/v2/health/live", self._ep("v2_live")(live)),
            Route("/v2/health/ready", self._ep("v2_ready")(ready)),
            Route("/v2", self._ep("v2_server")(server)),
            *routes,
        ]

    def extensions(self) -> list[str]:
        """The protocol extensions served: ``explain`` (POST .../explain), ``drift`` (GET
        /drift, Prometheus omi_drift_*) and ``defense`` (GET /defense, the omi_defense_*
        outputs and metrics) when the image was built with them."""
        document = self.config.document
        return [
            *EXTENSIONS,
            *(["explain"] if document.explain else []),
            *(["drift"] if document.drift else []),
            *(["defense"] if document.defense else []),
        ]

    async def v2_infer(self, name: str, body: bytes, header_length: str | None) -> Payload:
        self._model(name)
        require_ready(self.service)
        req, arrays = await self.offload.decode(decode_v2_body, body, header_length)
        wanted = req.get("outputs")
        names = (
            [o.get("name") for o in wanted if isinstance(o, dict)]
            if isinstance(wanted, list)
            else []
        )
        outputs = await self.infer_arrays(arrays, wants_defense(self.service, names))
        return self.v2_response(req, outputs)

    async def _v2_infer_hot(self, name: str, body: bytes, headers: dict[bytes, bytes]) -> Payload:
        length = headers.get(HEADER_KEY)
        return await self.v2_infer(name, body, None if length is None else length.decode())

    def hot_routes(self) -> list[tuple[str, str, str, RawHandler]]:
        """(prefix, suffix, metrics route, handler) served without Starlette."""
        if "v2" not in self.config.protocols:
            return []
        return [("/v2/models/", "/infer", "v2_infer", self._v2_infer_hot)]

    def v2_response(self, req: dict[str, Any], outputs: dict[str, Any]) -> Payload:
        wanted = req.get("outputs")
        all_binary = bool(parameters(req).get("binary_data_output"))
        binary_for: dict[str, bool] = {}
        if wanted is not None and not isinstance(wanted, list):
            raise InputError("`outputs` must be a list of {name, parameters} objects")
        if wanted:
            names = []
            for o in wanted:
                if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                    raise InputError("each requested output needs a name (a string)")
                names.append(o["name"])
                binary_for[o["name"]] = bool(parameters(o).get("binary_data", all_binary))
            missing = [n for n in names if n not in outputs]
            if missing:
                raise InputError(
                    f"unknown output(s) {shown(missing)}; the model gives {list(outputs)}"
                )
            outputs = {n: outputs[n] for n in names}
        encoded, blobs = [], []
        for name, value in outputs.items():
            spec, blob = encode_output(name, value, binary_for.get(name, all_binary))
            encoded.append(spec)
            if blob is not None:
                blobs.append(blob)
        body: dict[str, Any] = {
            "model_name": self.service.name,
            "model_version": self.config.model_version,
            "outputs": encoded,
        }
        if "id" in req:
            body["id"] = req["id"]
        text = json.dumps(body, separators=(",", ":")).encode()
        if not blobs:
            return 200, text, "application/json", []
        return (
            200,
            text + b"".join(blobs),
            "application/octet-stream",
            [(b"inference-header-content-length", str(len(text)).encode())],
        )

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        if "v1" in self.config.protocols:
            routes += self.v1_routes()
        if "v2" in self.config.protocols:
            routes += self.v2_routes()
        return routes

    def grpc_servicers(self) -> list[Any]:
        if (
            "v2" not in self.config.protocols
            or self.config.protocol != "v2"
            or not self.config.grpc_port
        ):
            return []
        from omibuild.runtime.adapters.grpc_v2 import servicer

        return [servicer(self)]


def _asks_defense(request: Request) -> bool:
    """V1's per-request defense: ``?defense=true`` or the X-OMI-Defense header. Read from the
    raw scope: parsing every request's query and headers cost 12 us (py-spy, one core)."""
    scope = request.scope
    if b"defense" in scope.get("query_string", b""):
        return request.query_params.get("defense", "").lower() in ("1", "true", "yes")
    for key, value in scope["headers"]:
        if key == b"x-omi-defense":
            return value.lower() in (b"1", b"true", b"yes")
    return False


def v2_instances(body: bytes, arrays: bool) -> Any:
    """A V2 request's one input tensor, for the explain extension (a decoder for ``Offload``)."""
    _, tensors = decode_v2_body(body, None)
    if len(tensors) != 1:
        raise HTTPError(400, "explain takes one input tensor of rows")
    return next(iter(tensors.values()))


def v1_instances(body: bytes, arrays: bool) -> Any:
    """A V1 predict body's instances, as one array when the model takes them so (a decoder for
    ``Offload``)."""
    document = json_document(body)
    if not isinstance(document, dict) or not ({"instances", "inputs"} & document.keys()):
        raise HTTPError(400, 'expected {"instances": [...]} or {"inputs": ...}')
    instances = document.get("instances", document.get("inputs"))
    if not isinstance(instances, list):
        raise HTTPError(400, "`instances` must be a list")
    return as_array(instances) if arrays else instances


def _datatype(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return "BOOL"
    if kinds <= {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"


def inputs_of_example(example: Any) -> list[dict[str, Any]]:
    """V2 input metadata from omi.yaml's example: rows of numbers are one tensor
    (``input-0``), records are one tensor per named column."""
    if not isinstance(example, list) or not example:
        return []
    if all(isinstance(row, dict) for row in example):
        names = list(example[0])
        return [
            {"name": str(n), "datatype": _datatype([r.get(n) for r in example]), "shape": [-1]}
            for n in names
        ]
    if isinstance(example[0], list):
        try:
            arr = np.asarray(example)
        except ValueError:  # ragged rows: no one tensor
            return []
        dtype = "FP64" if arr.dtype.kind == "f" else "INT64" if arr.dtype.kind in "iu" else "BYTES"
        return [{"name": "input-0", "datatype": dtype, "shape": [-1, *arr.shape[1:]]}]
    return []
