"""One gRPC unary method as every gRPC interface of the image serves it (KServe V2's
servicer, Modzy's): a request that does not decode is the client's INVALID_ARGUMENT, and a
failure nobody expected is INTERNAL with a request id and one JSON log line."""

from __future__ import annotations

from typing import Any

import grpc

from omibuild.runtime.faults import unexpected

_UNDECODABLE = object()


def handler(name: str, impl: Any, service: str, table: dict[str, Any]) -> grpc.RpcMethodHandler:
    """A unary method. A request that is not the message it should be is the client's error
    (INVALID_ARGUMENT): grpcio itself answers INTERNAL when a deserializer raises."""
    message = table[f"{name}Request"]

    def decode(raw: bytes) -> Any:
        try:
            return message.FromString(raw)
        except Exception:  # protobuf's DecodeError, or anything a malformed buffer raises
            return _UNDECODABLE

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if request is _UNDECODABLE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {name}Request")
        try:
            return impl(request, context)
        except Exception as exc:
            if context.code() not in (None, grpc.StatusCode.OK):
                raise  # context.abort's own exception: the status is set already
            # a bug of ours: INTERNAL with a request id (grpcio would say UNKNOWN, and log a
            # traceback over many lines), one JSON line in the log
            rid = unexpected(exc, route=f"grpc {name}")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=decode,
        response_serializer=table[f"{name}Response"].SerializeToString,
    )
