"""What every HTTP adapter shares: JSON helpers, body limits, Prometheus metrics, the
error shape hook, and running uvicorn with graceful shutdown."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from omibuild.runtime.codec import json_document
from omibuild.runtime.faults import InputError, PredictError, detach, unexpected
from omibuild.runtime.model import ModelService

JSON = "application/json"
ErrorBody = Callable[[int, str], dict[str, Any]]
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[HTTPError], tuple[int, str]]:
        return HTTPError, (self.status, self.message)  # raised in the decoder process too


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


async def read_body(request: Request, limit: int) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Any, length: str | None, limit: int) -> bytes:
    """The whole request body from an ASGI ``receive``, refused (413) above ``limit``."""
    if length and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body of {length} bytes is over the limit of {limit}")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_status(exc: Exception) -> tuple[int, str] | None:
    """The status and message of an error every protocol answers in its own shape. The error
    is detached from its frames (they hold the request) before anything keeps it."""
    detach(exc)
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    if isinstance(exc, InputError):
        return 400, str(exc)
    if isinstance(exc, PredictError):
        return 500, str(exc)
    if isinstance(exc, RecursionError):  # a JSON document nested deeper than Python recurses
        return 400, "the request is nested too deeply"
    return None


def known_or_unexpected(exc: Exception, route: str) -> tuple[int, str]:
    """The status and message to answer ``exc`` with: its own where a protocol knows it, else
    a 500 naming a request id that one JSON line of the log carries (a bug of ours: the
    server keeps serving)."""
    known = error_status(exc)
    if known is not None:
        return known
    rid = unexpected(exc, route=route)
    return 500, f"internal error (request id {rid})"


class ErrorGuard:
    """The outermost ASGI layer: an error nothing below answered (a route outside every
    adapter's handlers, a middleware's) becomes a JSON 500 with a request id and one log
    line, never Starlette's plain-text page and a traceback over many lines."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if getattr(exc, "_omi_request_id", None):  # answered and logged below already
                return
            rid = unexpected(exc, route=scope.get("path", "")[:100])
            if started:  # the reply is on its way: nothing better to do than end it
                return
            body = json.dumps({"error": f"internal error (request id {rid})"}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", JSON.encode()),
                                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    return json_document(body)


def label_value(text: str) -> str:
    """A label value in the Prometheus text exposition format: backslash, double quote and
    newline escaped, so a value can never close its quotes or start a new sample."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """A tiny Prometheus registry: request counts and latency, by route and status. Kept by
    hand rather than prometheus_client, whose several-worker mode needs a shared directory
    the read-only image does not have; the output is checked against prometheus_client's own
    parser in the tests."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(_BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.counts[(route, status)] += 1
        self.sums[route] += seconds
        buckets = self.buckets[route]
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        buckets[-1] += 1

    def render(self, service: ModelService) -> str:
        lines = ["# TYPE omi_requests_total counter"]
        for (route, status), n in sorted(self.counts.items()):
            lines.append(f'omi_requests_total{{route="{label_value(route)}",code="{status}"}} {n}')
        lines.append("# TYPE omi_request_duration_seconds histogram")
        for name, buckets in sorted(self.buckets.items()):
            route = label_value(name)
            for bound, n in zip(_BUCKETS, buckets, strict=False):
                lines.append(
                    f'omi_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {n}'
                )
            lines.append(
                f'omi_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {buckets[-1]}'
            )
            lines.append(
                f'omi_request_duration_seconds_sum{{route="{route}"}} {self.sums[name]:.6f}'
            )
            lines.append(f'omi_request_duration_seconds_count{{route="{route}"}} {buckets[-1]}')
        lines.append("# TYPE omi_predict_coalesced_total counter")
        lines.append(f"omi_predict_coalesced_total {service.lane.coalesced}")
        lines.append("# TYPE omi_model_ready gauge")
        model = label_value(service.name)
        lines.append(f'omi_model_ready{{model="{model}"}} {1 if service.ready else 0}')
        if service.drift is not None:
            lines += service.drift.metrics(label_value)
        if service.defense is not None:
            lines += service.defense.metrics(label_value)
        return "\n".join(lines) + "\n"


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(route: str, metrics: Metrics, error_body: ErrorBody) -> Callable[[Handler], Handler]:
    """Wrap a handler: map errors to the protocol's error shape, and record metrics."""

    def wrap(fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await fn(request)
            except Exception as exc:  # every error in the protocol's own shape, never text
                status, message = known_or_unexpected(exc, route)
                response = json_response(error_body(status, message), status)
            metrics.observe(route, response.status_code, time.perf_counter() - start)
            return response

        return handler

    return wrap


def require_ready(service: ModelService) -> None:
    if not service.ready:
        reason = f": {service.load_error}" if service.load_error else " (still loading)"
        raise HTTPError(503, f"model {service.name} is not ready{reason}")


# A hot route's handler: (path parameter, body, request headers) → (status, body, media type,
# extra response headers).
Payload = tuple[int, bytes, str, list[tuple[bytes, bytes]]]
RawHandler = Callable[[str, bytes, dict[bytes, bytes]], Awaitable[Payload]]


class HotRoute:
    """``POST <prefix>{name}<suffix>`` as a bare ASGI handler in front of the Starlette app.

    At one request at a time a small model predicts in about as long as Starlette takes to
    build its request and response objects, match routes and pass through its middleware;
    the hot route keeps the same limits, error shape and metrics without that. Every other
    request (and the lifespan) goes to ``app``."""

    def __init__(
        self,
        app: Any,
        prefix: str,
        suffix: str,
        handler: RawHandler,
        route: str,
        metrics: Metrics,
        error_body: ErrorBody,
        limit: int,
    ) -> None:
        self.app = app
        self.state = app.state
        self.prefix, self.suffix = prefix, suffix
        self.handler = handler
        self.route = route
        self.metrics = metrics
        self.error_body = error_body
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(self.prefix)
            or not path.endswith(self.suffix)
        ):
            await self.app(scope, receive, send)
            return
        name = path[len(self.prefix) : len(path) - len(self.suffix)]
        if not name or "/" in name:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        try:
            body = await receive_body(receive, length and length.decode(), self.limit)
            status, payload, media_type, extra = await self.handler(name, body, headers)
        except Exception as exc:
            status, payload, media_type, extra = self._error(exc)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", media_type.encode()),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        self.metrics.observe(self.route, status, time.perf_counter() - start)

    def _error(self, exc: Exception) -> Payload:
        status, message = known_or_unexpected(exc, self.route)
        body = json.dumps(self.error_body(status, message), separators=(",", ":")).encode()
        return status, body, JSON, []
