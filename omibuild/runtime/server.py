"""Start the one interface the environment asks for: HTTP on uvicorn (predict off the event
loop), gRPC beside it or alone, graceful on SIGTERM (in-flight requests finish, exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from concurrent import futures
from pathlib import Path
from typing import Any

from omibuild.runtime import log
from omibuild.runtime.adapters import get_adapter
from omibuild.runtime.config import ConfigError, RuntimeConfig, load_config
from omibuild.runtime.faults import load_failure_line, unexpected
from omibuild.runtime.model import ModelService
from omibuild.runtime.outputs import built_outputs, describe, learn
from omibuild.runtime.protocol import TimedHttpTools

GRACE_SECONDS = 30
WORKER_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE


def create_app(
    config: RuntimeConfig | None = None,
    service: ModelService | None = None,
    load: bool = True,
    worker: bool = False,
    on_load_failure: Any = None,
) -> Any:
    """The ASGI app for the configured interface.

    Alone, it answers at once and loads the model in the background (readiness says 503 until
    it has). As one ``worker`` of several, it loads the model before it accepts a connection,
    so the workers that are ready take all the traffic, then serves gRPC beside HTTP."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from omibuild.runtime.http import ErrorGuard, HotRoute, Metrics

    config = config or load_config()
    service = service or ModelService(config)
    if learn not in service.after_ready:
        service.after_ready.append(learn)
        service.outputs = built_outputs(config)  # metadata states them before the model loads
    metrics = Metrics()
    adapter = get_adapter(config.interface)(service, config, metrics)

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(service), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        grpc_server = None
        if worker:
            if load and not service.ready:
                try:
                    await asyncio.to_thread(service.load)
                except Exception as exc:
                    _worker_failed(load_failure_line(exc))
            grpc_server = _worker_grpc(adapter, config)
        elif load and not service.ready:
            service.load_in_background(on_load_failure)
        yield
        offload = getattr(adapter, "offload", None)
        if offload is not None:
            offload.close()
        if grpc_server is not None:
            await asyncio.to_thread(lambda: grpc_server.stop(GRACE_SECONDS).wait())

    async def routing_error(request: Request, exc: Exception) -> Response:
        """No route, or not this method: the protocol's own JSON error, not Starlette's text."""
        status = int(getattr(exc, "status_code", 404))
        message = (
            f"no route {request.method} {request.url.path}"
            if status == 404
            else f"{request.method} is not allowed on {request.url.path}"
        )
        return JSONResponse(
            adapter.error_body(status, message), status, headers=getattr(exc, "headers", None)
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        """What escaped every handler (Starlette answers it here, then raises it on to the
        ErrorGuard around the app, which keeps it out of uvicorn's multi-line log)."""
        rid = unexpected(exc, route=request.url.path[:100])
        exc._omi_request_id = rid  # type: ignore[attr-defined]
        return JSONResponse(adapter.error_body(500, f"internal error (request id {rid})"), 500)

    async def drift_route(request: Request) -> Response:
        """The drift detector's status (omi.yaml's drift), on every HTTP interface."""
        if service.drift is None:
            status = 503 if not service.ready and config.document.drift else 404
            message = "model is not ready" if status == 503 else "this image has no drift detector"
            return JSONResponse(adapter.error_body(status, message), status)
        return JSONResponse(service.drift.status())

    async def defense_route(request: Request) -> Response:
        """The defense's counters (omi.yaml's defense), on every HTTP interface; never a
        request's values."""
        if service.defense is None:
            status = 503 if not service.ready and config.document.defense else 404
            message = "model is not ready" if status == 503 else "this image has no defense"
            return JSONResponse(adapter.error_body(status, message), status)
        return JSONResponse(service.defense.status())

    routes = [
        *adapter.routes(),
        Route("/metrics", metrics_route),
        Route("/drift", drift_route),
        Route("/defense", defense_route),
    ]
    app: Any = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: routing_error, 405: routing_error, Exception: server_error},
    )
    app.state.service = service
    app.state.adapter = adapter
    for prefix, suffix, route, handler in getattr(adapter, "hot_routes", list)():
        error_body = adapter.error_body
        app = HotRoute(
            app, prefix, suffix, handler, route, metrics, error_body, config.max_body_bytes
        )
    return ErrorGuard(app)


def worker_app() -> Any:
    """The uvicorn factory for OMI_WORKERS > 1: each worker process loads its own model and
    serves gRPC beside HTTP on the shared gRPC port (gRPC binds with SO_REUSEPORT, so the kernel
    spreads connections over the workers, as it does for HTTP)."""
    config = load_config()
    TimedHttpTools.configure(config)
    return create_app(config, worker=True)


def _say(line: str) -> None:
    """The one plain line a person reads in `docker logs` (beside the JSON log records)."""
    print(f"omibuild runtime: {line}", file=sys.stderr, flush=True)


def _stop_self(line: str) -> None:
    _say(line)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn drains and returns; serve() exits 1


def _worker_failed(line: str) -> None:
    """A worker that cannot load stops the whole server: uvicorn's supervisor stops, rather
    than restarts, a worker that exits with its start-up failure code (3)."""
    _say(line)
    os._exit(WORKER_STARTUP_FAILURE)


def _worker_grpc(adapter: Any, config: RuntimeConfig) -> Any:
    servicers = adapter.grpc_servicers() if adapter.http else []
    if not servicers:
        return None
    try:
        return _grpc_server(servicers, _grpc_port(config), adapter.service)
    except ConfigError as err:  # one line, and uvicorn's code for a worker that cannot start
        _say(str(err))
        os._exit(WORKER_STARTUP_FAILURE)


def _grpc_port(config: RuntimeConfig) -> int:
    return config.grpc_port or config.port + 1


def _check_port_free(port: int, what: str) -> None:
    """Fail with one line, before anything claims to listen, if another process holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # IPv6 may be off
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as err:
            raise ConfigError(f"cannot listen on {what} port {port}: {err.strerror}") from None


def _grpc_server(servicers: list[tuple[str, Any]], port: int, service: ModelService) -> Any:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from omibuild.runtime.protos import POOL

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)),
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    )
    names = []
    for name, generic in servicers:
        server.add_generic_rpc_handlers((generic,))
        names.append(name)
    # grpc.health.v1 answers NOT_SERVING until the model is loaded, so gRPC readiness probes
    # (Kubernetes' grpc probe, Chassis clients) agree with ServerReady and the HTTP routes.
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def mark(status: Any) -> None:
        for name in ["", *names]:
            health_servicer.set(name, status)

    mark(health_pb2.HealthCheckResponse.NOT_SERVING)
    service.when_ready(lambda: mark(health_pb2.HealthCheckResponse.SERVING))
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
        pool=POOL,
    )
    try:
        bound = server.add_insecure_port(f"[::]:{port}")
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if bound == 0:
        raise ConfigError(f"cannot listen on gRPC port {port}")
    server.start()
    log.info("grpc listening", port=port, services=names)
    return server


def _serve_grpc_only(config: RuntimeConfig, service: ModelService, servicers: list[Any]) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = _grpc_server(servicers, config.port, service)

    def failed(line: str) -> None:
        _say(line)
        stop.set()

    service.load_in_background(failed)
    stop.wait()
    log.info("stopping", grace_seconds=GRACE_SECONDS)
    server.stop(GRACE_SECONDS).wait()
    return 1 if service.load_error else 0


def serve(config: RuntimeConfig) -> int:
    import uvicorn

    service = ModelService(config)
    app = create_app(config, service, on_load_failure=_stop_self)
    servicers = app.state.adapter.grpc_servicers()
    if not app.state.adapter.http:
        return _serve_grpc_only(config, service, servicers)
    _check_port_free(config.port, "HTTP")  # before anything says it listens
    grpc_server = None
    if servicers:
        _check_port_free(_grpc_port(config), "gRPC")
        if config.workers == 1:  # else each worker serves gRPC itself (worker_app)
            grpc_server = _grpc_server(servicers, _grpc_port(config), service)
    TimedHttpTools.configure(config)
    log.info(
        "http listening",
        interface=config.interface,
        protocol=config.protocol,
        port=config.port,
        model=config.model_name,
        workers=config.workers,
    )
    # uvicorn finishes in-flight requests on SIGTERM, then re-raises the signal with the
    # handler it found installed. Make that handler a no-op, so the process exits 0 (as it
    # does as PID 1 in a container) instead of dying of the re-raised signal.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    common: dict[str, Any] = dict(
        host="0.0.0.0",
        port=config.port,
        http="omibuild.runtime.protocol:TimedHttpTools",
        limit_concurrency=config.max_connections,
        log_level="warning",
        log_config=log.uvicorn_config("warning"),
        access_log=config.access_log,
        timeout_graceful_shutdown=GRACE_SECONDS,
        server_header=False,
        date_header=False,
    )
    failed = False
    if config.workers > 1:
        failed = _serve_workers(config.workers, common)
    else:
        uvicorn.Server(uvicorn.Config(app, **common)).run()
    if grpc_server is not None:
        grpc_server.stop(GRACE_SECONDS).wait()
    log.info("stopped")
    return 1 if service.load_error or failed else 0


def _serve_workers(workers: int, common: dict[str, Any]) -> bool:
    """Several worker processes, each building its own app (and loading its own model) from
    the environment. uvicorn's supervisor, driven here rather than through uvicorn.run, so
    that a worker's start-up failure becomes this process's exit code. Returns whether one
    failed."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "omibuild.runtime.server:worker_app", factory=True, workers=workers, **common
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return any(p.process.exitcode == WORKER_STARTUP_FAILURE for p in supervisor.processes)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":  # SageMaker starts containers with `serve`
        args = args[1:]
    elif len(args) == 2 and args[0] == "describe":  # the build's dry prediction
        return describe(None if args[1] == "-" else Path(args[1]))
    if args:
        print(
            f"omibuild runtime: unknown arguments {args}; usage: [serve] | describe OUT|-",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config()
    except ConfigError as err:
        print(f"omibuild runtime: {err}", file=sys.stderr)
        return 2
    try:
        return serve(config)
    except ConfigError as err:
        print(f"omibuild runtime: {err}", file=sys.stderr)
        return 2
