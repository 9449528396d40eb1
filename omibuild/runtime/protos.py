"""Protocol buffer messages for the gRPC interfaces, from the .proto files in ``proto/``.

``make protos`` compiles them (KServe's grpc_predict_v2.proto for ``inference.
GRPCInferenceService``, Modzy's model.proto for ``ModzyModel``) into one descriptor set,
``proto/omi.desc``, loaded here into a private pool (POOL): no generated code, any protobuf
runtime, and no clash with a client library's registrations of the same names in the same
process. POOL is also what gRPC server reflection serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = Path(__file__).with_name("proto") / "omi.desc"
POOL = descriptor_pool.DescriptorPool()


def _load() -> dict[str, dict[str, Any]]:
    """File name -> {message name -> message class}."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    tables = {}
    for proto in files.file:
        POOL.Add(proto)
        found = POOL.FindFileByName(proto.name)
        tables[proto.name] = {
            name: message_factory.GetMessageClass(desc)
            for name, desc in found.message_types_by_name.items()
        }
    return tables


_TABLES = _load()
INFERENCE = _TABLES["grpc_predict_v2.proto"]
MODZY = _TABLES["modzy_model.proto"]
