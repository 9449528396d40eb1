"""KServe's own model server (kserve.ModelServer) serving a scikit-learn model file, for the
differential conformance suite: run with the kserve client venv's Python (it has kserve and
scikit-learn, nothing of omibuild). KServe handles the protocols; this only predicts.

    python kserve_server.py MODEL_FILE NAME HTTP_PORT GRPC_PORT
"""

from __future__ import annotations

import sys
import uuid

import joblib
import numpy as np
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class Sklearn(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.model = joblib.load(path)
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
        if isinstance(payload, InferRequest):
            rows = payload.inputs[0].as_numpy()
            result = self.model.predict(rows)
            output = InferOutput(
                name="output-0", shape=list(result.shape), datatype="INT64", data=result.tolist()
            )
            return InferResponse(
                model_name=self.name,
                infer_outputs=[output],
                response_id=payload.id or str(uuid.uuid4()),
            )
        return {"predictions": self.model.predict(np.asarray(payload["instances"])).tolist()}


if __name__ == "__main__":
    path, name, http_port, grpc_port = sys.argv[1:5]
    server = ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), workers=1)
    server.start([Sklearn(name, path)])
