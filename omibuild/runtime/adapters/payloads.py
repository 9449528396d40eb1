"""Request bodies the HTTP extensions share: JSON instances, CSV rows, .npy arrays, and
MLflow's dataframe forms."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from omibuild.runtime.codec import json_document
from omibuild.runtime.faults import InputError, brief, detach
from omibuild.runtime.http import HTTPError
from omibuild.runtime.model import as_array


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def csv_rows(body: bytes) -> list[list[Any]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "CSV body is not UTF-8") from None
    try:
        rows = [
            [_number(cell.strip()) for cell in row] for row in csv.reader(io.StringIO(text)) if row
        ]
    except csv.Error as exc:  # a field over the csv module's 128 KiB limit, a stray NUL
        detach(exc)  # its frames hold the body: no cycle through this frame
        raise HTTPError(400, f"malformed CSV: {exc}") from None
    if not rows:
        raise HTTPError(400, "empty CSV body")
    return rows


def npy_array(body: bytes) -> Any:
    import numpy as np

    stream = io.BytesIO(body)
    try:
        # The header is read and checked first: it may claim 10^12 elements in a 100-byte body,
        # and np.load would try to allocate them before noticing the data is short.
        fmt = np.lib.format
        version = fmt.read_magic(stream)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(stream, max_header_size=10_000)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if expected != len(body) - stream.tell():
            raise ValueError(f"the header's shape {shape} does not match the data's size")
        stream.seek(0)
        return np.load(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        detach(exc)  # its frames hold the body: no cycle through this frame
        raise HTTPError(400, f"body is not a .npy array: {brief(exc)}") from None


def json_instances(body: Any) -> list[Any]:
    """SageMaker/Vertex style: a list, or {"instances": [...]}, or {"inputs": [...]}."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("instances", "inputs"):
            if key in body:
                value = body[key]
                if not isinstance(value, list):
                    raise HTTPError(400, f"`{key}` must be a list")
                return value
    raise HTTPError(400, 'expected a JSON list or {"instances": [...]}')


def instances_body(body: bytes, arrays: bool, vertex: bool = False) -> Any:
    """A JSON body's instances (``json_instances``; Vertex wants them under ``instances``),
    as one array when ``arrays`` says the model takes them so. A decoder for ``Offload``."""
    document = json_document(body)
    if vertex and (not isinstance(document, dict) or "instances" not in document):
        raise HTTPError(400, 'expected {"instances": [...], "parameters": {...}}')
    rows = json_instances(document)
    return as_array(rows) if arrays else rows


def jsonlines_rows(body: bytes) -> list[Any]:
    """JSON Lines: one record per line, as SageMaker batch transform sends a multi-record
    mini-batch (SplitType Line); blank lines are no records."""
    rows = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json_document(line))
        except InputError as exc:  # json's position is inside the record: name its line
            detach(exc)  # its frames hold the body: no cycle through this frame
            raise HTTPError(400, f"JSON Lines record on line {number}: {exc}") from None
    if not rows:
        raise HTTPError(400, "empty JSON Lines body")
    return rows


def to_jsonlines(predictions: Any) -> str:
    """One prediction per line, each line ended, so that batch transform's line assembly
    puts each record's answer on its own line."""
    return "".join(json.dumps(p, separators=(",", ":")) + "\n" for p in predictions)


def _media_ranges(header: str) -> list[tuple[str, str, int, float]]:
    """(type, subtype, specificity, q) of each media range of an Accept header (RFC 9110
    §12.5.1). Entries that do not parse are skipped, as the RFC lets a server do."""
    ranges = []
    for item in header.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        main, _, sub = kind.lower().partition("/")
        if not main or not sub:
            continue
        q, extra = 1.0, 0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
            elif key.strip():
                extra = 1  # a parameter (charset=utf-8) makes the range more specific
        if not 0.0 <= q <= 1.0:
            continue
        specificity = 0 if main == "*" else 1 if sub == "*" else 2 + extra
        if main == "*" and sub != "*":
            continue  # "*/json" is not a media range
        ranges.append((main, sub, specificity, q))
    return ranges


def negotiate(header: str | None, offered: tuple[str, ...]) -> str | None:
    """The offered media type an Accept header prefers (RFC 9110 §12.5.1): each type takes
    the q of the most specific range that matches it; the highest q wins, ties go to the
    order of ``offered``; q=0 refuses. No header (or an empty one) accepts anything."""
    if not header or not header.strip():
        return offered[0]
    ranges = _media_ranges(header)
    best, best_q = None, 0.0
    for media in offered:
        main, _, sub = media.partition("/")
        matching = [
            (spec, q)
            for m, s, spec, q in ranges
            if (m == "*" or m == main) and (s == "*" or s == sub)
        ]
        if not matching:
            continue
        q = max(matching)[1]  # the most specific range decides
        if q > best_q:
            best, best_q = media, q
    return best


def to_csv(predictions: Any) -> str:
    """CSV as the SageMaker inference toolkit writes it: one row per line, ended by "\n"
    (not the csv module's "\r\n", which corrupts line-assembled batch output)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in predictions:
        writer.writerow(row if isinstance(row, list | tuple) else [row])
    return out.getvalue()
