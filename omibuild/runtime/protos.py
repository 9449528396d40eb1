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


def message_classes(
    descriptor_set: Path, pool: descriptor_pool.DescriptorPool
) -> dict[str, dict[str, Any]]:
    """A compiled descriptor set's files, added to ``pool``: file name -> {message name ->
    message class}. The build side loads containerd's messages the same way."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    tables = {}
    for proto in files.file:
        pool.Add(proto)
        found = pool.FindFileByName(proto.name)
        tables[proto.name] = {
            name: message_factory.GetMessageClass(desc)
            for name, desc in found.message_types_by_name.items()
        }
    return tables


_TABLES = message_classes(DESCRIPTOR_SET, POOL)
INFERENCE = _TABLES["grpc_predict_v2.proto"]
MODZY = _TABLES["modzy_model.proto"]
