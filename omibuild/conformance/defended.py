"""check's findings on an image built with omi.yaml's defense, from the outside: `/defense`
parses, a typical reference row is not flagged, a row far outside the reference's range is
flagged (or refused, under guard: reject); and, when asked (`check --robustness N`), ART's
HopSkipJump run through the image's own V2 endpoint on N reference rows."""

from __future__ import annotations

import json
from typing import Any

from omibuild.conformance.bodies import v2_request
from omibuild.conformance.probe import Endpoint, _http
from omibuild.conformance.robustness import Found, robustness_finding

DEFENSE_ROUTE = "/defense"
REFERENCE = "/opt/omi/analysis/defense/reference.json"
DEFENSE_OUTPUTS = ("omi_defense_p_value", "omi_defense_flagged")  # V2 outputs the image gives
CHUNK = 256  # rows per request the attack sends


class Screener:
    """One running KServe interface of the image, asked for each row's screening."""

    def __init__(self, target: Endpoint, reference: dict[str, Any], records: bool) -> None:
        self.target = target
        self.names = [f["name"] for f in reference["features"]]
        self.records = records  # the example sends rows as objects keyed by column

    def ask(self, rows: list[list[Any]]) -> tuple[int, Any]:
        """(status, [{p_value, flagged}, ...] or the error reply) for ``rows``."""
        t = self.target
        if t.protocol == "v1":
            instances = (
                [dict(zip(self.names, r, strict=True)) for r in rows] if self.records else rows
            )
            url = f"{t.base}/v1/models/{t.model_name}:predict?defense=true"
            status, text = _http("POST", url, {"instances": instances}, timeout=60)
            body = _json(text)
            if status != 200 or not isinstance(body, dict):
                return status, body
            return status, body.get("defense")
        status, body = self._infer(rows, DEFENSE_OUTPUTS)
        if status != 200 or not isinstance(body, dict):
            return status, body
        out = {o["name"]: o["data"] for o in body.get("outputs", [])}
        p, flagged = (out.get(name, []) for name in DEFENSE_OUTPUTS)
        return status, [
            {"p_value": a, "flagged": bool(b)} for a, b in zip(p, flagged, strict=False)
        ]

    def _infer(self, rows: list[list[Any]], outputs: tuple[str, ...]) -> tuple[int, Any]:
        """A V2 infer of ``rows`` as one FP64 tensor, naming ``outputs`` when there are any."""
        request = v2_request([[float(v) for v in r] for r in rows])
        if outputs:
            request["outputs"] = [{"name": name} for name in outputs]
        t = self.target
        status, text = _http("POST", f"{t.base}/v2/models/{t.model_name}/infer", request, 60)
        return status, _json(text)

    def labels(self, rows: list[list[float]]) -> list[Any]:
        """The model's answer per row (V2 output-0), for the attack."""
        out: list[Any] = []
        for start in range(0, len(rows), CHUNK):
            status, body = self._infer(rows[start : start + CHUNK], ())
            if status != 200 or not isinstance(body, dict):
                raise RuntimeError(f"V2 infer answered HTTP {status}")
            out += body["outputs"][0]["data"]
        return out


def read_reference(containers: Any, cid: str) -> dict[str, Any] | None:
    try:
        document = json.loads(containers.exec(cid, ["cat", REFERENCE]))
    except Exception:
        return None
    return document if isinstance(document, dict) and "features" in document else None


def typical_row(reference: dict[str, Any]) -> list[Any]:
    """Per feature its middle: the median of the score's fit rows (or the middle of the range),
    a reference category. Near the mean, so no calibrated score flags it."""
    score = reference.get("score") or {}
    fit = score.get("fit") or []
    columns = score.get("columns") or []
    row: list[Any] = []
    for f in reference["features"]:
        if f["kind"] == "numeric" and f["name"] in columns and fit:
            j = columns.index(f["name"])
            values = sorted(r[j] for r in fit)
            row.append(values[len(values) // 2])
        elif f["kind"] == "numeric":
            low, high = f.get("low") or 0.0, f.get("high") or 0.0
            row.append((low + high) / 2)
        else:
            row.append((f.get("categories") or [""])[0])
    return row


def far_row(reference: dict[str, Any]) -> tuple[list[Any], str] | None:
    """The typical row with its first numeric feature ten ranges past the reference's top."""
    row = typical_row(reference)
    for j, f in enumerate(reference["features"]):
        if f["kind"] == "numeric" and f.get("high") is not None:
            span = (f["high"] - (f.get("low") or 0.0)) or 1.0
            row[j] = f["high"] + 10 * span
            return row, f["name"]
    return None


def defense_findings(
    name: str, target: Endpoint, containers: Any, cid: str, omi: dict[str, Any], robustness: int
) -> list[Found]:
    """(requirement, ok, detail) for each of check's findings on the defense."""
    status, text = _http("GET", f"{target.base}{DEFENSE_ROUTE}")
    body = _json(text)
    ok = status == 200 and isinstance(body, dict) and {"alpha", "rows", "flagged"} <= body.keys()
    detail = (
        f"guard {body['guard']}, score {body['score']}, alpha {body['alpha']}"
        if ok
        else f"HTTP {status}: {str(body)[:120]}"
    )
    found = [(f"{name}: serves the defense status", ok, detail)]
    reference = read_reference(containers, cid)
    if reference is None:  # a hook without a reference table: nothing to probe it with
        return found
    records = isinstance(omi.get("example"), list) and all(
        isinstance(r, dict) for r in omi["example"]
    )
    if target.protocol == "v2" and (
        records or any(f["kind"] != "numeric" for f in reference["features"])
    ):
        return found  # V2's one FP64 tensor cannot carry these rows; V1 probes them
    screener = Screener(target, reference, records)
    status, rows = screener.ask([typical_row(reference)])
    calm = status == 200 and isinstance(rows, list) and rows and not rows[0]["flagged"]
    found.append(
        (
            f"{name}: a typical reference row is not flagged",
            bool(calm),
            f"p-value {rows[0]['p_value']}" if calm else f"HTTP {status}: {str(rows)[:120]}",
        )
    )
    far = far_row(reference)
    if far is not None:
        row, feature = far
        status, rows = screener.ask([row])
        guard = (omi.get("defense") or {}).get("guard")
        if guard == "reject":
            caught = status == 400 and feature in str(rows)
            seen = f"HTTP {status}: {str(rows)[:160]}"
        else:
            caught = status == 200 and isinstance(rows, list) and bool(rows) and rows[0]["flagged"]
            seen = f"HTTP {status}: {json.dumps(rows)[:160]}"
        found.append((f"{name}: a row far outside `{feature}`'s range is caught", caught, seen))
    if robustness and target.protocol == "v2":
        found.append(robustness_finding(name, screener, reference, robustness))
    return found


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
