"""Protocol buffer messages for the gRPC interfaces, built from descriptors at import time.

No generated code: the field layouts below follow the published protos (KServe's
grpc_predict_v2.proto for ``inference.GRPCInferenceService``; Modzy's model.proto for
``ModzyModel``), so the image works with any protobuf runtime and no protoc step. The files
live in a private pool (POOL), handed to gRPC server reflection, so they never clash with
a client library's registrations of the same names in the same process."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL, INT32, INT64 = (
    F.TYPE_STRING,
    F.TYPE_BYTES,
    F.TYPE_BOOL,
    F.TYPE_INT32,
    F.TYPE_INT64,
)
UINT32, UINT64, FLOAT, DOUBLE, MESSAGE = (
    F.TYPE_UINT32,
    F.TYPE_UINT64,
    F.TYPE_FLOAT,
    F.TYPE_DOUBLE,
    F.TYPE_MESSAGE,
)
REPEATED = "repeated"

# A field: (name, number, type[, "repeated"][, message type name][, oneof index])
Field = tuple[Any, ...]


def _field(msg: descriptor_pb2.DescriptorProto, spec: Field) -> None:
    name, number, kind, *rest = spec
    f = msg.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    for extra in rest:
        if extra == REPEATED:
            f.label = F.LABEL_REPEATED
        elif isinstance(extra, str):
            f.type_name = extra
        elif isinstance(extra, int):
            f.oneof_index = extra


def _message(
    container: Any,
    name: str,
    fields: list[Field],
    *,
    maps: dict[str, tuple[str, int, str]] | None = None,
    nested: dict[str, list[Field]] | None = None,
    oneofs: list[str] | None = None,
) -> descriptor_pb2.DescriptorProto:
    msg = container.add(name=name)
    for oneof in oneofs or []:
        msg.oneof_decl.add(name=oneof)
    for nested_name, nested_fields in (nested or {}).items():
        _message(msg.nested_type, nested_name, nested_fields)
    for field_name, (key_type, value_type, value_msg) in (maps or {}).items():
        # map<K, V> is a repeated nested XxxEntry message with map_entry set
        entry_name = "".join(p.capitalize() for p in field_name.split("_")) + "Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        _field(entry, ("key", 1, key_type))
        value = ("value", 2, value_type, value_msg) if value_msg else ("value", 2, value_type)
        _field(entry, value)
    for spec in fields:
        _field(msg, spec)
    return msg


POOL = descriptor_pool.DescriptorPool()


def _register(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    POOL.Add(fdp)
    fd = POOL.FindFileByName(fdp.name)
    return {
        name: message_factory.GetMessageClass(desc)
        for name, desc in fd.message_types_by_name.items()
    }


def _inference() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="omibuild/grpc_predict_v2.proto", package="inference", syntax="proto3"
    )
    m = fdp.message_type
    P = ".inference.InferParameter"
    C = ".inference.InferTensorContents"
    _message(m, "ServerLiveRequest", [])
    _message(m, "ServerLiveResponse", [("live", 1, BOOL)])
    _message(m, "ServerReadyRequest", [])
    _message(m, "ServerReadyResponse", [("ready", 1, BOOL)])
    _message(m, "ModelReadyRequest", [("name", 1, STRING), ("version", 2, STRING)])
    _message(m, "ModelReadyResponse", [("ready", 1, BOOL)])
    _message(m, "ServerMetadataRequest", [])
    _message(
        m,
        "ServerMetadataResponse",
        [("name", 1, STRING), ("version", 2, STRING), ("extensions", 3, STRING, REPEATED)],
    )
    _message(m, "ModelMetadataRequest", [("name", 1, STRING), ("version", 2, STRING)])
    tensor_meta = [("name", 1, STRING), ("datatype", 2, STRING), ("shape", 3, INT64, REPEATED)]
    T = ".inference.ModelMetadataResponse.TensorMetadata"
    _message(
        m,
        "ModelMetadataResponse",
        [
            ("name", 1, STRING),
            ("versions", 2, STRING, REPEATED),
            ("platform", 3, STRING),
            ("inputs", 4, MESSAGE, REPEATED, T),
            ("outputs", 5, MESSAGE, REPEATED, T),
        ],
        nested={"TensorMetadata": tensor_meta},
    )
    req = _message(
        m,
        "ModelInferRequest",
        [
            ("model_name", 1, STRING),
            ("model_version", 2, STRING),
            ("id", 3, STRING),
            ("parameters", 4, MESSAGE, REPEATED, ".inference.ModelInferRequest.ParametersEntry"),
            ("inputs", 5, MESSAGE, REPEATED, ".inference.ModelInferRequest.InferInputTensor"),
            (
                "outputs",
                6,
                MESSAGE,
                REPEATED,
                ".inference.ModelInferRequest.InferRequestedOutputTensor",
            ),
            ("raw_input_contents", 7, BYTES, REPEATED),
        ],
        maps={"parameters": (STRING, MESSAGE, P)},
    )
    _message(
        req.nested_type,
        "InferInputTensor",
        [
            ("name", 1, STRING),
            ("datatype", 2, STRING),
            ("shape", 3, INT64, REPEATED),
            (
                "parameters",
                4,
                MESSAGE,
                REPEATED,
                ".inference.ModelInferRequest.InferInputTensor.ParametersEntry",
            ),
            ("contents", 5, MESSAGE, C),
        ],
        maps={"parameters": (STRING, MESSAGE, P)},
    )
    _message(
        req.nested_type,
        "InferRequestedOutputTensor",
        [
            ("name", 1, STRING),
            (
                "parameters",
                2,
                MESSAGE,
                REPEATED,
                ".inference.ModelInferRequest.InferRequestedOutputTensor.ParametersEntry",
            ),
        ],
        maps={"parameters": (STRING, MESSAGE, P)},
    )
    resp = _message(
        m,
        "ModelInferResponse",
        [
            ("model_name", 1, STRING),
            ("model_version", 2, STRING),
            ("id", 3, STRING),
            ("parameters", 4, MESSAGE, REPEATED, ".inference.ModelInferResponse.ParametersEntry"),
            ("outputs", 5, MESSAGE, REPEATED, ".inference.ModelInferResponse.InferOutputTensor"),
            ("raw_output_contents", 6, BYTES, REPEATED),
        ],
        maps={"parameters": (STRING, MESSAGE, P)},
    )
    _message(
        resp.nested_type,
        "InferOutputTensor",
        [
            ("name", 1, STRING),
            ("datatype", 2, STRING),
            ("shape", 3, INT64, REPEATED),
            (
                "parameters",
                4,
                MESSAGE,
                REPEATED,
                ".inference.ModelInferResponse.InferOutputTensor.ParametersEntry",
            ),
            ("contents", 5, MESSAGE, C),
        ],
        maps={"parameters": (STRING, MESSAGE, P)},
    )
    _message(
        m,
        "InferParameter",
        [
            ("bool_param", 1, BOOL, 0),
            ("int64_param", 2, INT64, 0),
            ("string_param", 3, STRING, 0),
            ("double_param", 4, DOUBLE, 0),
            ("uint64_param", 5, UINT64, 0),
        ],
        oneofs=["parameter_choice"],
    )
    _message(
        m,
        "InferTensorContents",
        [
            ("bool_contents", 1, BOOL, REPEATED),
            ("int_contents", 2, INT32, REPEATED),
            ("int64_contents", 3, INT64, REPEATED),
            ("uint_contents", 4, UINT32, REPEATED),
            ("uint64_contents", 5, UINT64, REPEATED),
            ("fp32_contents", 6, FLOAT, REPEATED),
            ("fp64_contents", 7, DOUBLE, REPEATED),
            ("bytes_contents", 8, BYTES, REPEATED),
        ],
    )
    svc = fdp.service.add(name="GRPCInferenceService")
    for method in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ):
        svc.method.add(
            name=method,
            input_type=f".inference.{method}Request",
            output_type=f".inference.{method}Response",
        )
    return _register(fdp)


def _modzy() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(name="omibuild/modzy_model.proto", syntax="proto3")
    m = fdp.message_type
    _message(m, "StatusRequest", [])
    _message(
        m,
        "ModelInfo",
        [
            ("model_name", 1, STRING),
            ("model_version", 2, STRING),
            ("model_author", 3, STRING),
            ("model_type", 4, STRING),
            ("source", 5, STRING),
        ],
    )
    _message(
        m,
        "ModelDescription",
        [
            ("summary", 1, STRING),
            ("details", 2, STRING),
            ("technical", 3, STRING),
            ("performance", 4, STRING),
        ],
    )
    _message(
        m,
        "ModelInput",
        [
            ("filename", 1, STRING),
            ("accepted_media_types", 2, STRING, REPEATED),
            ("max_size", 3, STRING),
            ("description", 4, STRING),
        ],
    )
    _message(
        m,
        "ModelOutput",
        [
            ("filename", 1, STRING),
            ("media_type", 2, STRING),
            ("max_size", 3, STRING),
            ("description", 4, STRING),
        ],
    )
    _message(
        m,
        "ModelResources",
        [("required_ram", 1, STRING), ("num_cpus", 2, FLOAT), ("num_gpus", 3, INT32)],
    )
    _message(m, "ModelTimeout", [("status", 1, STRING), ("run", 2, STRING)])
    _message(
        m,
        "ModelFeatures",
        [
            ("adversarial_defense", 1, BOOL),
            ("batch_size", 2, INT32),
            ("retrainable", 3, BOOL),
            ("results_format", 4, STRING),
            ("drift_format", 5, STRING),
            ("explanation_format", 6, STRING),
        ],
    )
    _message(
        m,
        "StatusResponse",
        [
            ("status_code", 1, INT32),
            ("status", 2, STRING),
            ("message", 3, STRING),
            ("model_info", 4, MESSAGE, ".ModelInfo"),
            ("description", 5, MESSAGE, ".ModelDescription"),
            ("inputs", 6, MESSAGE, REPEATED, ".ModelInput"),
            ("outputs", 7, MESSAGE, REPEATED, ".ModelOutput"),
            ("resources", 8, MESSAGE, ".ModelResources"),
            ("timeout", 9, MESSAGE, ".ModelTimeout"),
            ("features", 10, MESSAGE, ".ModelFeatures"),
        ],
    )
    _message(
        m,
        "InputItem",
        [("input", 1, MESSAGE, REPEATED, ".InputItem.InputEntry")],
        maps={"input": (STRING, BYTES, "")},
    )
    _message(
        m,
        "RunRequest",
        [
            ("inputs", 1, MESSAGE, REPEATED, ".InputItem"),
            ("detect_drift", 2, BOOL),
            ("explain", 3, BOOL),
        ],
    )
    _message(
        m,
        "OutputItem",
        [("output", 1, MESSAGE, REPEATED, ".OutputItem.OutputEntry"), ("success", 2, BOOL)],
        maps={"output": (STRING, BYTES, "")},
    )
    _message(
        m,
        "RunResponse",
        [
            ("status_code", 1, INT32),
            ("status", 2, STRING),
            ("message", 3, STRING),
            ("outputs", 4, MESSAGE, REPEATED, ".OutputItem"),
        ],
    )
    _message(m, "ShutdownRequest", [])
    _message(
        m,
        "ShutdownResponse",
        [("status_code", 1, INT32), ("status", 2, STRING), ("message", 3, STRING)],
    )
    svc = fdp.service.add(name="ModzyModel")
    for method in ("Status", "Run", "Shutdown"):
        svc.method.add(
            name=method, input_type=f".{method}Request", output_type=f".{method}Response"
        )
    return _register(fdp)


INFERENCE = _inference()
MODZY = _modzy()
