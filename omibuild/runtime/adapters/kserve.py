"""What KServe's REST adapter (kfserving) and its gRPC servicer (grpc_v2) share. Its own
module, so that neither imports the other for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from omibuild.runtime.codec import HEADER
from omibuild.runtime.faults import InputError

if TYPE_CHECKING:
    from omibuild.runtime.config import RuntimeConfig
    from omibuild.runtime.model import ModelService
    from omibuild.runtime.screen import Screening

EXTENSIONS = ["binary_tensor_data"]
# V2 outputs a request may name to get each row's screening (omi.yaml's defense)
DEFENSE_OUTPUTS = ("omi_defense_p_value", "omi_defense_flagged")
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


def wants_defense(service: ModelService, names: Any) -> bool:
    """Whether a V2 request names a defense output and the image has a defense."""
    return service.defense is not None and any(n in DEFENSE_OUTPUTS for n in names)


def defense_outputs(screening: Screening | None) -> dict[str, Any]:
    """The V2 defense outputs: each row's p-value (NaN where none was computed) and flag."""
    if screening is None:
        raise InputError(
            "the defense screens rows of its reference's columns, and these inputs are not "
            "such rows; leave omi_defense_* out of `outputs`"
        )
    p = [np.nan if v is None else v for v in screening.p_values]
    return {
        DEFENSE_OUTPUTS[0]: np.asarray(p, dtype=np.float64),
        DEFENSE_OUTPUTS[1]: np.asarray(screening.flagged, dtype=bool),
    }
