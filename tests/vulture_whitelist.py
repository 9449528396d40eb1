"""Names vulture cannot see used: called by a framework by name, or loaded by string from a
registry. `make lint` runs vulture over omibuild/ with this file."""

# ruff: noqa
# mypy: ignore-errors
from omibuild.runtime.adapters import grpc_v2, kfserving, mlflow, modzy, sagemaker, vertex
from omibuild.runtime import defense, flavors, log, server
from omibuild import progress
from omibuild.sources import huggingface, local, mlflow as mlflow_source

# gRPC methods, dispatched by their service's method names
grpc_v2.InferenceServicer.ServerLive
grpc_v2.InferenceServicer.ServerReady
grpc_v2.InferenceServicer.ModelReady
grpc_v2.InferenceServicer.ServerMetadata
grpc_v2.InferenceServicer.ModelMetadata
grpc_v2.InferenceServicer.ModelInfer
# plugin families: loaded from "module:Class" strings in their registries
kfserving.KServeAdapter
mlflow.MlflowAdapter
modzy.ModzyAdapter
sagemaker.SageMakerAdapter
vertex.VertexAdapter
huggingface.HuggingFaceModelSource
local.LocalModelSource
mlflow_source.MlflowModelSource
# uvicorn's factory for several workers, named by string
server.worker_app
# attributes set on objects that read them: protobuf messages and descriptors, onnxruntime
# options, exceptions (detach), sources' progress counters
_.model_author
_.model_type
_.batch_size
_.type_name
_.oneof_index
_.map_entry
_.intra_op_num_threads
_.__traceback__
_.__cause__
_.__context__
_.downloaded_bytes
# used by the tests: a progress that prints nothing
progress.QUIET
# tarfile.TarInfo fields set for deterministic layer headers (store/layers.py)
_.mtime
_.gid
_.uname
_.gname
# protobuf fields set on the Modzy ModelFeatures message (runtime/adapters/modzy.py)
_.explanation_format
_.drift_format
# pickle's Unpickler protocol, called by its opcode loop (detect/pickles.py)
_.persistent_load
_.metastack
# io.RawIOBase's protocol (detect/pickles.py's zlib reader)
_.readable
# logging's dictConfig builds uvicorn's handler from its dotted name (runtime/log.py)
log.JsonHandler
# a protobuf message's field, set on the StatusResponse (runtime/adapters/modzy.py)
_.num_gpus
_.adversarial_defense  # ModelFeatures' flag, set where omi.yaml's defense is baked in
# runtime/defense.py: Guard.from_table builds a guard from rows (the unit tests' reference)
_.from_table
