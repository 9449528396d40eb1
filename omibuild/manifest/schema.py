"""JSON Schema validation that speaks the user's language: every error becomes an Issue at
the right line, with a hint, and a failed oneOf reports the branch that fits best."""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from omibuild.manifest.issues import Issue, json_path
from omibuild.manifest.load import RawManifest

_JSON_TYPE = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
_TYPE_WORD = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "null": "nothing",
}


@cache
def schema_text() -> str:
    return (resources.files("omibuild") / "data" / "omi.schema.json").read_text("utf-8")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def _type_of(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _resolve(sub: dict[str, Any]) -> dict[str, Any]:
    ref = sub.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(schema()["$defs"][ref.removeprefix("#/$defs/")])
    return sub


def _types(sub: dict[str, Any]) -> set[str]:
    t = _resolve(sub).get("type")
    found = {t} if isinstance(t, str) else set(t or [])
    if "integer" in found:
        found.add("number")
    return found


def _fmt(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return f"`{text if len(text) <= 60 else text[:57] + '...'}`"


def _choices(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _branch_errors(err: ValidationError) -> list[ValidationError]:
    """For a failed oneOf/anyOf, the errors of the branch that fits the instance best."""
    branches: Any = err.validator_value
    instance: Any = err.instance
    inst_type = _type_of(instance)
    fitting = [i for i, b in enumerate(branches) if inst_type in _types(b) or not _types(b)]
    if len(fitting) == 1:
        own = [e for e in err.context or [] if e.schema_path and e.schema_path[0] == fitting[0]]
        if own:
            return own
    # Several branches share the type: pick by which required keys the instance already has.
    if isinstance(instance, dict) and len(fitting) > 1:

        def score(i: int) -> int:
            props = _resolve(branches[i]).get("properties", {})
            return sum(1 for k in instance if k in props)

        best = max(fitting, key=score)
        own = [e for e in err.context or [] if e.schema_path and e.schema_path[0] == best]
        if own:
            return own
    match = best_match(err.context or [])
    return [match] if match is not None else []


def _describe_forms(branches: list[dict[str, Any]]) -> str:
    names = []
    for b in branches:
        r = _resolve(b)
        title = b.get("title") or r.get("title")
        kind = _TYPE_WORD.get(str(r.get("type")), "a value")
        names.append(f"{title} ({kind})" if title else kind)
    return "one of: " + "; ".join(names)


def _to_issues(raw: RawManifest, err: ValidationError, hint: str | None = None) -> list[Issue]:
    parts = tuple(err.absolute_path)
    kw: Any = err.validator
    inst: Any = err.instance
    value: Any = err.validator_value
    sub_schema: Any = err.schema

    def at(message: str, h: str | None = None, *, key: str | None = None) -> Issue:
        where = (*parts, key) if key is not None else parts
        line, col = raw.position(where, key=key is not None)
        return Issue(raw.file, line, col, json_path(where), message, h or hint)

    if kw in ("oneOf", "anyOf"):
        branches = value
        forms = _describe_forms(branches)
        if not err.context:  # valid under several branches
            return [at(f"matches more than one allowed form; expected exactly {forms}")]
        inst_type = _type_of(inst)
        if not any(inst_type in _types(b) for b in branches if _types(b)):
            return [
                at(f"expected {forms}; got {_TYPE_WORD.get(inst_type, inst_type)} {_fmt(inst)}")
            ]
        issues: list[Issue] = []
        for sub in _branch_errors(err):
            issues.extend(_to_issues(raw, sub, hint=hint or f"this value may be {forms}"))
        return issues
    if kw == "additionalProperties":
        allowed = sorted(sub_schema.get("properties", {}))
        extras = [k for k in inst if k not in sub_schema.get("properties", {})]
        out = []
        for key in extras:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            h = f"did you mean `{close[0]}`?" if close else f"allowed keys: {_choices(allowed)}"
            out.append(at(f"unknown key `{key}`", h, key=key))
        return out
    if kw == "required":
        missing = [k for k in value if k not in inst]
        return [at(f"missing required key `{k}`") for k in missing]
    if kw == "type":
        want = value
        wants = [want] if isinstance(want, str) else list(want)
        return [
            at(
                f"expected {' or '.join(_TYPE_WORD.get(w, w) for w in wants)}, "
                f"got {_TYPE_WORD.get(_type_of(inst), _type_of(inst))} {_fmt(inst)}"
            )
        ]
    if kw in ("enum", "const"):
        allowed = value if kw == "enum" else [value]
        close = difflib.get_close_matches(str(inst), [str(a) for a in allowed], n=1, cutoff=0.5)
        maybe = f"did you mean `{close[0]}`?" if close else None
        return [at(f"{_fmt(inst)} is not allowed; use {_choices(allowed)}", maybe)]
    if kw == "pattern":
        desc = sub_schema.get("description")
        what = f"it must be {desc}" if desc else f"it must match {value}"
        return [at(f"{_fmt(inst)} is not valid: {what}")]
    if kw == "maxProperties" and parts[-1:] == ("source",):
        found = ", ".join(sorted(inst))
        return [
            at(
                f"declare exactly one model source, found {len(inst)}: {found}",
                "keep one of local, mlflow or huggingface",
            )
        ]
    if kw == "minProperties" and parts[-1:] == ("source",):
        return [at("declare a model source", "add one of local, mlflow or huggingface")]
    if kw == "uniqueItems":
        return [at(f"{_fmt(inst)} lists the same item twice", "remove the duplicate")]
    if kw in ("minimum", "maximum"):
        return [at(f"{inst} is out of range: {kw} is {value}")]
    return [at(err.message)]


def check(raw: RawManifest) -> list[Issue]:
    issues: list[Issue] = []
    for err in sorted(
        _validator().iter_errors(raw.data), key=lambda e: list(map(str, e.absolute_path))
    ):
        issues.extend(_to_issues(raw, err))
    return issues
