"""MLflow's scoring protocol (what `mlflow models serve` speaks): /ping, /health, /version,
and /invocations with dataframe_split, dataframe_records, instances, inputs or text/csv."""

from __future__ import annotations

from importlib.metadata import version as dist_version
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from omibuild.runtime.adapters.payloads import csv_rows
from omibuild.runtime.codec import json_document
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.faults import InputError, shown
from omibuild.runtime.http import (
    HTTPError,
    Metrics,
    endpoint,
    json_response,
    read_body,
    require_ready,
)
from omibuild.runtime.model import ModelService, to_jsonable

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


# the MLflow release whose scoring server the conformance suite compares this with
SCORING_VERSION = "3.17.2"


def _refused_content_type(ctype: str, params: list[str], given: str) -> str | None:
    """Why MLflow's scoring server would answer 415, in its words; None when it takes it."""
    if ctype not in ("application/json", "text/csv"):
        return (
            "This predictor only supports the following content types: "
            f"Types: ['text/csv', 'application/json']. Got '{given[:100]}'."
        )
    values = dict(p.partition("=")[::2] for p in params if p)
    if values.get("charset", "utf-8").strip().lower() != "utf-8":
        return "The scoring server only supports UTF-8"
    unknown = sorted(k for k in values if k.strip().lower() != "charset")
    if unknown:
        return f"Unrecognized content type parameters: {', '.join(unknown)}."
    return None


# MLflow 3's error classification (mlflow/error_classification.py): the error class and
# SQLSTATE its scoring server adds to each error_code
ERROR_CLASSES = {
    "BAD_REQUEST": ("INVALID_PARAMETER_VALUE", "KAM00"),
    "INVALID_PARAMETER_VALUE": ("INVALID_PARAMETER_VALUE", "KAM00"),
    "RESOURCE_DOES_NOT_EXIST": ("RESOURCE_NOT_FOUND", "KAM00"),
    "TEMPORARILY_UNAVAILABLE": ("CLIENT_INTERNAL_ERROR", "XXM00"),
    "INTERNAL_ERROR": ("CLIENT_INTERNAL_ERROR", "XXM00"),
}


def mlflow_error(code: str, message: str) -> dict[str, Any]:
    error_class, sqlstate = ERROR_CLASSES[code]
    return {
        "error_code": code,
        "message": message,
        "sqlstate": sqlstate,
        "error_class": error_class,
    }


def split_frame(value: Any) -> tuple[list[Any] | None, list[Any]]:
    """``dataframe_split`` checked as pandas' split orient reads it for MLflow's scoring
    server: an object of ``columns`` (a list), ``data`` (rows, each a list as long as the
    columns) and an optional ``index``, nothing else."""
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise HTTPError(400, "dataframe_split needs {columns, data}, data a list of rows")
    unknown = sorted(set(value) - {"columns", "data", "index"})
    if unknown:
        raise HTTPError(400, f"dataframe_split has unexpected keys {shown(unknown)}")
    columns, rows = value.get("columns"), value["data"]
    if columns is not None and not (
        isinstance(columns, list) and all(isinstance(c, str | int) for c in columns)
    ):
        raise HTTPError(400, "dataframe_split's columns must be a list of names")
    width = len(columns) if columns is not None else None
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise HTTPError(400, f"dataframe_split's data row {i} is not a list")
        if width is None:
            width = len(row)
        if len(row) != width:
            raise HTTPError(
                400, f"dataframe_split's data row {i} has {len(row)} values for {width} columns"
            )
    return columns, rows


class MlflowAdapter:
    http = True

    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None:
        self.service = service
        self.config = config
        self.metrics = metrics

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        code = {
            400: "BAD_REQUEST",
            404: "RESOURCE_DOES_NOT_EXIST",
            405: "BAD_REQUEST",
            413: "BAD_REQUEST",
            503: "TEMPORARILY_UNAVAILABLE",
        }.get(status, "INTERNAL_ERROR")
        return mlflow_error(code, message)

    def _frame(self, columns: list[str] | None, rows: list[Any]) -> Any:
        """pyfunc models take a DataFrame; the others take rows."""
        if self.config.flavor == "pyfunc":
            import pandas as pd

            return pd.DataFrame(rows, columns=columns)
        return rows

    def parse(self, body: Any) -> Any:
        if not isinstance(body, dict):
            raise HTTPError(400, f"expected a JSON object with one of: {', '.join(FORMATS)}")
        keys = [k for k in FORMATS if k in body]
        if len(keys) != 1:
            raise HTTPError(
                400,
                f"the request must have exactly one of {', '.join(FORMATS)}; "
                f"found {keys or list(body)}",
            )
        key, value = keys[0], body[keys[0]]
        if key == "dataframe_split":
            columns, rows = split_frame(value)
            return self._frame(columns, rows)
        if key == "dataframe_records":
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise HTTPError(400, "dataframe_records must be a list of objects")
            if self.config.flavor == "pyfunc":
                import pandas as pd

                return pd.DataFrame(value)
            return [list(r.values()) for r in value] if self.service.preprocess is None else value
        if not isinstance(value, list | dict):
            raise HTTPError(400, f"`{key}` must be a list or an object")
        return value

    def routes(self) -> list[BaseRoute]:
        ep = lambda route: endpoint(route, self.metrics, self.error_body)  # noqa: E731

        async def ping(request: Request) -> Response:
            return PlainTextResponse("\n", status_code=200 if self.service.ready else 503)

        async def version(request: Request) -> Response:
            # MLflow's own version, as `mlflow models serve` answers (with its media type);
            # without MLflow in the image, the version whose scoring protocol this speaks
            text = SCORING_VERSION
            for dist in ("mlflow", "mlflow-skinny"):
                try:
                    text = dist_version(dist)
                    break
                except Exception:
                    continue
            return Response(text, media_type="application/json")

        async def invocations(request: Request) -> Response:
            require_ready(self.service)
            raw = await read_body(request, self.config.max_body_bytes)
            given = request.headers.get("content-type", "")
            ctype, *params = (p.strip() for p in given.split(";"))
            refused = _refused_content_type(ctype.lower(), params, given)
            if refused:  # MLflow's scoring server answers these in plain text
                return PlainTextResponse(refused, status_code=415)
            if ctype.lower() == "text/csv":
                # as pandas.read_csv reads it for `mlflow models serve`: the first row is
                # always the header, whatever it holds
                rows = csv_rows(raw)
                header = [str(c) for c in rows[0]]
                if len(rows) < 2:
                    raise HTTPError(400, "the CSV has a header row and no data rows")
                data = self._frame(header, rows[1:])
            else:
                data = self.parse(json_document(raw))
            try:
                predictions = await self.service.apredict(data)
            except InputError as err:
                # mlflow models serve's codes: what the signature refuses, what the model does
                code = "INVALID_PARAMETER_VALUE" if err.signature else "BAD_REQUEST"
                return json_response(mlflow_error(code, str(err)), 400)
            return json_response({"predictions": to_jsonable(predictions)})

        return [
            Route("/ping", ep("ping")(ping)),
            Route("/health", ep("health")(ping)),
            Route("/version", ep("version")(version)),
            Route("/invocations", ep("invocations")(invocations), methods=["POST"]),
        ]

    def grpc_servicers(self) -> list[Any]:
        return []
