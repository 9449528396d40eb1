"""Open Inference Protocol (v2) tensors: JSON and the binary tensor data extension."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from omibuild.runtime.faults import InputError, brief, detach, shown

DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_BY_NUMPY = {np.dtype(v).name: k for k, v in DTYPES.items() if v != "object"}
HEADER = "inference-header-content-length"


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype.name]
    except KeyError:
        raise InputError(f"unsupported output dtype {array.dtype}") from None


def _element_count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


MAX_DIMS = 32  # numpy's own limit is 64
MAX_ELEMENTS = 1 << 40  # far above any body limit; only stops products that overflow int64


def check_shape(name: str, shape: Any) -> list[int]:
    """A tensor's shape, refused before anything is multiplied or allocated: each dimension
    on its own, then the product of the non-zero ones (a zero beside 2**70 makes the element
    count 0, and numpy's reshape still fails on the huge dimension)."""
    # type() rather than isinstance(): JSON true is a bool, and bool is an int in Python
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"input {shown(name)}: shape must be a list of non-negative integers")
    if len(shape) > MAX_DIMS or any(d > MAX_ELEMENTS for d in shape):
        raise InputError(f"input {shown(name)}: shape {shown(shape[:MAX_DIMS])} is too large")
    if _element_count([d for d in shape if d]) > MAX_ELEMENTS:
        raise InputError(f"input {shown(name)}: shape {shown(shape)} is too large")
    return shape


def _bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"input {shown(name)}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out.append(raw[offset : offset + n])
        offset += n
    if len(out) != count:
        raise InputError(f"input {shown(name)}: {len(out)} BYTES elements for shape of {count}")
    return out


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def decode_input(spec: dict[str, Any], raw: bytes | None = None) -> np.ndarray:
    name = spec.get("name")
    datatype = spec.get("datatype")
    if not isinstance(name, str) or not name:
        raise InputError(f"each input needs a name (a non-empty string), got {shown(name)}")
    if datatype not in DTYPES:
        raise InputError(
            f"input {shown(name)}: datatype must be one of {', '.join(DTYPES)}, "
            f"got {shown(datatype)}"
        )
    shape = check_shape(name, spec.get("shape"))
    count = _element_count(shape)
    if raw is not None:
        if datatype == "BYTES":
            return np.array(
                [_text(e) for e in _bytes_elements(raw, count, name)], dtype=object
            ).reshape(shape)
        itemsize = np.dtype(DTYPES[datatype]).itemsize
        if len(raw) != count * itemsize:
            raise InputError(
                f"input {shown(name)}: {len(raw)} bytes of binary data for shape {shape} "
                f"of {datatype} ({count * itemsize} expected)"
            )
        return np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)
    if "data" not in spec:
        raise InputError(f"input {shown(name)} has no data")
    data = spec["data"]
    try:
        if datatype == "BYTES":
            flat = np.array(data, dtype=object).reshape(-1)
            array = np.array([_text(e) for e in flat], dtype=object)
        else:
            array = np.asarray(data, dtype=DTYPES[datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:  # 300 for INT8, -1 for UINT64
        detach(exc)  # its frames hold the body: no cycle through this frame
        raise InputError(
            f"input {shown(name)}: data does not fit {datatype}: {brief(exc)}"
        ) from None
    if array.size != count:
        raise InputError(f"input {shown(name)}: {array.size} elements do not fit shape {shape}")
    return array.reshape(shape)


def encode_output(name: str, value: Any, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind == "O" and array.ndim == 0:
        array = np.asarray([value], dtype=object)
    datatype = datatype_of(array)
    out: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
    if datatype == "BYTES":
        elements = [
            e if isinstance(e, bytes | str) else json.dumps(_plain(e))
            for e in array.reshape(-1).tolist()
        ]
        if binary:
            blob = b"".join(
                struct.pack("<I", len(b)) + b
                for b in (e.encode() if isinstance(e, str) else e for e in elements)
            )
            out["parameters"] = {"binary_data_size": len(blob)}
            return out, blob
        out["data"] = [
            e.decode("utf-8", "replace") if isinstance(e, bytes) else e for e in elements
        ]
        return out, None
    if binary:
        blob = np.ascontiguousarray(array).tobytes()
        out["parameters"] = {"binary_data_size": len(blob)}
        return out, blob
    out["data"] = array.reshape(-1).tolist()
    return out, None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def json_document(raw: bytes | str) -> Any:
    """A request's JSON. Malformed, or nested deeper than the decoder recurses (a 100,000-deep
    array is a few hundred bytes), is the client's error, never a 500."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        detach(exc)  # its frames hold the body: no cycle through this frame
        raise InputError(f"malformed JSON: {brief(exc)}") from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None


def split_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part and the binary part of a request (binary extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise InputError(f"{HEADER} must be an integer, got {shown(header_length)}") from None
        if not 0 <= n <= len(body):
            raise InputError(f"{HEADER}={n} is outside the body of {len(body)} bytes")
        json_part, binary = body[:n], body[n:]
    request = json_document(json_part)
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("inputs"), list)
        or not request["inputs"]
    ):
        raise InputError("the request needs a non-empty list of `inputs`")
    return request, binary


def decode_inputs(request: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request["inputs"]:
        if not isinstance(spec, dict):
            raise InputError("each input must be an object with name, shape, datatype and data")
        size = parameters(spec).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InputError(
                    f"input {shown(spec.get('name'))}: binary_data_size {size} is outside "
                    "the binary part of the body"
                )
            raw = binary[offset : offset + size]
            offset += size
        arrays[spec.get("name")] = decode_input(spec, raw)  # type: ignore[index]
    return arrays


def decode_v2_body(
    body: bytes, header_length: str | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A V2 request body: the request without its tensors' data, and the tensors as arrays.
    A decoder for ``Offload`` (the data is dropped so that only arrays travel back)."""
    request, binary = split_request(body, header_length)
    parameters(request)  # what infer and explain both refuse, before any tensor is decoded
    arrays = decode_inputs(request, binary)
    request["inputs"] = [
        {k: v for k, v in spec.items() if k != "data"} for spec in request["inputs"]
    ]
    return request, arrays


def parameters(body: dict[str, Any]) -> dict[str, Any]:
    """A request's or tensor's ``parameters``: an object, or absent."""
    params = body.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError("`parameters` must be an object")
    return params
