"""KServe v2 over gRPC: ``inference.GRPCInferenceService`` with raw_input_contents and
raw_output_contents (the binary form), plus the typed contents fields for JSON-less clients."""

from __future__ import annotations

from typing import Any

import grpc

from omibuild import __version__
from omibuild.runtime.adapters.kserve import (
    EXTENSIONS,
    V2Model,
    defense_outputs,
    outputs_of,
    wants_defense,
)
from omibuild.runtime.codec import decode_input, encode_output
from omibuild.runtime.faults import InputError, PredictError, detach, shown
from omibuild.runtime.grpc_methods import handler
from omibuild.runtime.protos import INFERENCE

SERVICE = "inference.GRPCInferenceService"
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InferenceServicer:
    def __init__(self, adapter: V2Model) -> None:
        self.adapter = adapter
        self.service = adapter.service

    def _check_model(self, name: str, version: str, context: grpc.ServicerContext) -> None:
        """An empty or other name, or a version other than the one served: NOT_FOUND, as the
        reference servers answer (an empty version means the served one)."""
        if name != self.service.name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {shown(name)} not found; this server has {self.service.name!r}",
            )
        served = self.adapter.config.model_version
        if version and version != served:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {shown(name)} has no version {shown(version)}; it serves {served!r}",
            )

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return INFERENCE["ServerLiveResponse"](live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return INFERENCE["ServerReadyResponse"](ready=self.service.ready)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_model(request.name, request.version, context)
        return INFERENCE["ModelReadyResponse"](ready=self.service.ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return INFERENCE["ServerMetadataResponse"](
            name="omibuild", version=__version__, extensions=EXTENSIONS
        )

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_model(request.name, request.version, context)
        meta = self.adapter.metadata()
        response = INFERENCE["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
        return response

    def _arrays(self, request: Any) -> dict[str, Any]:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        arrays = {}
        for i, tensor in enumerate(request.inputs):
            spec: dict[str, Any] = {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
            }
            if raw:
                arrays[tensor.name] = decode_input(spec, raw[i])
                continue
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise InputError(
                    f"input {shown(tensor.name)}: {shown(tensor.datatype)} needs raw_input_contents"
                )
            spec["data"] = list(getattr(tensor.contents, field))
            arrays[tensor.name] = decode_input(spec)
        if not arrays:
            raise InputError("the request has no inputs")
        return arrays

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_model(request.model_name, request.model_version, context)
        if not self.service.ready:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"model {self.service.name} is not ready")
        try:
            arrays = self._arrays(request)
            model_input = next(iter(arrays.values())) if len(arrays) == 1 else arrays
            wanted = [o.name for o in request.outputs]
            if wants_defense(self.service, wanted):
                result, screening = self.service.predict_blocking_screened(model_input)
                outputs = outputs_of(result) | defense_outputs(screening)
            else:
                outputs = outputs_of(self.service.predict_blocking(model_input))
            missing = [n for n in wanted if n not in outputs]
            if missing:
                raise InputError(
                    f"unknown output(s) {shown(missing)}; the model gives {list(outputs)}"
                )
            response = INFERENCE["ModelInferResponse"](
                model_name=self.service.name,
                model_version=self.adapter.config.model_version,
                id=request.id,
            )
            names = wanted or list(outputs)
            # typed in, typed out (as KServe answers), when every output has a typed field: the
            # spec lets raw contents stand for all outputs or none, never some
            typed = (
                []
                if request.raw_input_contents
                else [encode_output(n, outputs[n], False)[0] for n in names]
            )
            if typed and all(t["datatype"] in _CONTENTS for t in typed):
                for spec in typed:
                    out = response.outputs.add(
                        name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
                    )
                    data = spec["data"]
                    if spec["datatype"] == "BYTES":
                        data = [d if isinstance(d, bytes) else str(d).encode() for d in data]
                    getattr(out.contents, _CONTENTS[spec["datatype"]]).extend(data)
                return response
            for name in names:
                spec, blob = encode_output(name, outputs[name], binary=True)
                response.outputs.add(name=name, datatype=spec["datatype"], shape=spec["shape"])
                response.raw_output_contents.append(blob or b"")
            return response
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(detach(exc)))
        except PredictError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(detach(exc)))


def servicer(adapter: V2Model) -> tuple[str, grpc.GenericRpcHandler]:
    impl = InferenceServicer(adapter)
    methods = (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    )
    handlers = {m: handler(m, getattr(impl, m), SERVICE, INFERENCE) for m in methods}
    return SERVICE, grpc.method_handlers_generic_handler(SERVICE, handlers)
