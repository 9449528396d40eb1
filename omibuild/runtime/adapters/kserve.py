"""What KServe's REST adapter (kfserving) and its gRPC servicer (grpc_v2) share. Its own
module, so that neither imports the other for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from omibuild.runtime.codec import HEADER

if TYPE_CHECKING:
    from omibuild.runtime.config import RuntimeConfig
    from omibuild.runtime.model import ModelService

EXTENSIONS = ["binary_tensor_data"]
HEADER_KEY = HEADER.lower().encode()


class V2Model(Protocol):
    """What the gRPC servicer needs of the adapter that serves V2 (kfserving's)."""

    service: ModelService
    config: RuntimeConfig

    def metadata(self) -> dict[str, Any]: ...


def outputs_of(result: Any) -> dict[str, Any]:
    """Named output tensors from whatever the model (or postprocess hook) returned."""
    if isinstance(result, dict) and not isinstance(result.get("output-0", 0), dict):
        return result
    if isinstance(result, list) and any(isinstance(r, dict | list | str | bytes) for r in result):
        try:
            array = np.asarray(result)
            if array.dtype != object and array.dtype.kind not in "USO":
                return {"output-0": array}
        except ValueError:
            pass
        out = np.empty(len(result), dtype=object)
        out[:] = result
        return {"output-0": out}
    return {"output-0": result}
