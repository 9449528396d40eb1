"""The gRPC wire formats: the .proto files compile to the committed descriptor set, and every
message and field the runtime serves matches, by number, type and label, the descriptors that
third-party clients ship compiled from the upstream definitions (tritonclient for the
inference service, chassisml for ModzyModel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from omibuild.runtime import protos
from tests.conftest import ROOT

Fields = dict[str, tuple[int, int, int, str]]


def flatten(file: descriptor_pb2.FileDescriptorProto) -> Fields:
    """message.field (nested messages dotted) -> (number, type, label, message type's name)."""
    out: Fields = {}

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        for f in message.field:
            out[f"{prefix}{message.name}.{f.name}"] = (
                f.number,
                f.type,
                f.label,
                f.type_name.rsplit(".", 1)[-1],
            )
        for nested in message.nested_type:
            walk(nested, f"{prefix}{message.name}.")

    for message in file.message_type:
        walk(message, "")
    return out


def ours(name: str) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    protos.POOL.FindFileByName(name).CopyToProto(proto)
    return proto


def methods(file: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[str, str]]:
    return {
        f"{s.name}.{m.name}": (m.input_type.rsplit(".", 1)[-1], m.output_type.rsplit(".", 1)[-1])
        for s in file.service
        for m in s.method
    }


@pytest.mark.parametrize(
    ("where", "sources", "desc"),
    [
        ("runtime", ("grpc_predict_v2.proto", "modzy_model.proto"), "omi.desc"),
        ("engine", ("containerd.proto", "leases.proto"), "containerd.desc"),
    ],
)
def test_the_committed_descriptor_sets_are_compiled_from_the_proto_files(
    tmp_path: Path, where: str, sources: tuple[str, ...], desc: str
) -> None:
    proto_dir = ROOT / "omibuild" / where / "proto"
    out = tmp_path / desc
    protoc = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(proto_dir)]
    subprocess.run(
        [*protoc, f"--descriptor_set_out={out}", *(str(proto_dir / s) for s in sources)],
        check=True,
        capture_output=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString((proto_dir / desc).read_bytes())
    assert fresh == committed, f"run `make protos` and commit {desc}"


def test_the_inference_service_matches_tritonclients_compiled_descriptors() -> None:
    from tritonclient.grpc import service_pb2

    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    mine = ours("grpc_predict_v2.proto")
    assert mine.package == theirs.package == "inference"
    their_fields = flatten(theirs)
    # Triton's file is a superset (more messages and fields); ours must be exactly its subset.
    for key, value in flatten(mine).items():
        assert their_fields.get(key) == value, (key, value, their_fields.get(key))
    their_methods = methods(theirs)
    for key, value in methods(mine).items():
        assert their_methods.get(key) == value, key


def chassis_descriptor() -> dict[str, Any]:
    """ModzyModel as chassisml 1.5 ships it compiled, read in its own virtualenv (it needs
    protobuf < 5 and cannot share this interpreter)."""
    python = ROOT / ".clients" / "chassis" / "bin" / "python"
    if not python.exists():
        pytest.fail("the chassis client venv is missing: run `make setup`")
    code = (
        "import json, sys\n"
        "from google.protobuf import descriptor_pb2, json_format\n"
        "from chassis.protos.v1 import model_pb2\n"
        "p = descriptor_pb2.FileDescriptorProto()\n"
        "model_pb2.DESCRIPTOR.CopyToProto(p)\n"
        "sys.stdout.write(json_format.MessageToJson(p, preserving_proto_field_name=True))\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.integration
def test_the_modzy_service_matches_chassismls_compiled_descriptors() -> None:
    from google.protobuf import json_format

    theirs = json_format.ParseDict(chassis_descriptor(), descriptor_pb2.FileDescriptorProto())
    mine = ours("modzy_model.proto")
    assert mine.package == theirs.package
    assert flatten(mine) == flatten(theirs)
    assert methods(mine) == methods(theirs)
