"""Read omi.yaml into plain data plus a map from each JSON path to its position in the file.

PyYAML's composer keeps marks on nodes; we construct the data ourselves from the node tree
so that every value (and every mapping key) remembers its line and column, duplicate keys
are caught instead of silently overwritten, and ``${VAR}`` interpolation happens in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omibuild.errors import UsageError
from omibuild.manifest.issues import Issue, json_path

PathKey = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line, column

MAX_MANIFEST_BYTES = 1 << 20
_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")
_LEFTOVER = re.compile(r"\$\{[^}]*\}?")


@dataclass
class RawManifest:
    """What load() returns: the data (None if unreadable) and where everything sits."""

    file: str
    path: Path
    data: Any
    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def position(self, parts: PathKey, *, key: bool = False) -> Position:
        """The position of the value (or its key) at ``parts``, or of its nearest ancestor."""
        table = self.keys if key else self.values
        if key and parts in table:
            return table[parts]
        while parts not in self.values and parts:
            parts = parts[:-1]
        return self.values.get(parts, (1, 1))


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Returns the expanded text and an error message (or None)."""
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name, default = m.group(2), m.group(3)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    out = _VAR.sub(repl, text)
    if missing:
        return text, f"environment variable {missing[0]} is not set and has no default"
    stripped = _VAR.sub("", text)
    bad = _LEFTOVER.search(stripped)
    if bad:
        return (
            text,
            f"malformed interpolation {bad.group(0)!r}: use ${{NAME}} or ${{NAME:-default}}",
        )
    return out, None


# A manifest is a few hundred values a few levels deep. Aliases (*a) are expanded as they are
# built, so a 1.5 KB file of nested aliases can stand for billions of values: building stops
# at these bounds instead.
MAX_VALUES = 20_000
MAX_DEPTH = 32


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        self.node, self.message = node, message


class _Builder:
    def __init__(self, raw: RawManifest, env: Mapping[str, str]) -> None:
        self.raw = raw
        self.env = env
        self.scalars = yaml.constructor.SafeConstructor()
        self.built = 0

    def issue(self, node: yaml.Node, parts: PathKey, message: str, hint: str | None = None) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.raw.issues.append(Issue(self.raw.file, line, col, json_path(parts), message, hint))

    def build(self, node: yaml.Node, parts: PathKey) -> Any:
        self.built += 1
        if self.built > MAX_VALUES:
            raise _TooLarge(node, f"expands to more than {MAX_VALUES} values")
        if len(parts) > MAX_DEPTH:
            raise _TooLarge(node, f"is nested more than {MAX_DEPTH} levels deep")
        self.raw.values[parts] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, parts)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*parts, i)) for i, child in enumerate(node.value)]
        value = self.scalars.construct_object(node)
        if isinstance(value, str) and node.tag == "tag:yaml.org,2002:str" and "$" in value:
            value, error = interpolate(value, self.env)
            if error:
                self.issue(
                    node, parts, error, "export the variable or add a default: ${NAME:-value}"
                )
        elif not isinstance(value, str | int | float | bool | type(None)):
            self.issue(
                node,
                parts,
                f"unsupported YAML value of type {type(value).__name__}",
                "quote it to make it a string",
            )
            value = str(value)
        return value

    def mapping(self, node: yaml.MappingNode, parts: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.issue(
                    key_node,
                    parts,
                    "YAML merge keys (<<) are not supported",
                    "write the keys out; anchors (&a / *a) on whole values work",
                )
                continue
            key = (
                self.scalars.construct_object(key_node)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            if not isinstance(key, str):
                self.issue(
                    key_node, parts, f"mapping keys must be strings, got {key!r}", "quote the key"
                )
                continue
            child = (*parts, key)
            if key in out:
                first = self.raw.keys[child]
                self.issue(
                    key_node,
                    child,
                    f"duplicate key {key!r} (first defined at line {first[0]})",
                    "remove one of them; YAML keeps only the last",
                )
                continue
            self.raw.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child)
        return out


def _yaml_error_issue(file: str, err: yaml.YAMLError) -> Issue:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    hint = None
    if "\t" in problem or "tab" in str(err).lower():
        hint = "indent with spaces; YAML does not allow tabs for indentation"
    elif isinstance(err, yaml.reader.ReaderError):
        line, col = 1, 1
        message = f"invalid YAML: {err.reason} (byte {err.position})"
        hint = "omi.yaml must be UTF-8 text without control characters"
    return Issue(file, line, col, "$", message, hint)


def load_text(text: str, *, file: str, path: Path, env: Mapping[str, str]) -> RawManifest:
    raw = RawManifest(file=file, path=path, data=None)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raw.issues.append(_yaml_error_issue(file, err))
        return raw
    except RecursionError:  # PyYAML's composer recurses once per level
        raw.issues.append(
            Issue(file, 1, 1, "$", "invalid YAML: nested too deeply", "is this really omi.yaml?")
        )
        return raw
    if root is None:
        raw.issues.append(
            Issue(
                file,
                1,
                1,
                "$",
                "the file is empty",
                "run `omibuild init` to write a starting omi.yaml",
            )
        )
        return raw
    if not isinstance(root, yaml.MappingNode):
        line, col = root.start_mark.line + 1, root.start_mark.column + 1
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        raw.issues.append(
            Issue(
                file,
                line,
                col,
                "$",
                f"the top level must be a mapping, not {kind}",
                "start with keys such as `apiVersion: omibuild/v1` and `name:`",
            )
        )
        return raw
    try:
        raw.data = _Builder(raw, env).build(root, ())
    except _TooLarge as err:
        mark = err.node.start_mark
        raw.issues.append(
            Issue(file, mark.line + 1, mark.column + 1, "$", f"the manifest {err.message}",
                  "is this really omi.yaml? an alias (*a) counts once for every use")
        )  # fmt: skip
        raw.data = None
        return raw
    _interface_aliases(raw.data)
    return raw


# KServe is the name KFServing has had since 2021; OMI's labels keep the spec's name.
INTERFACE_ALIASES = {"kserve": "kfserving"}


def _interface_aliases(data: Any) -> None:
    runtimes = data.get("runtimes") if isinstance(data, dict) else None
    if not isinstance(runtimes, dict):
        return
    default = runtimes.get("default")
    if isinstance(default, str) and default in INTERFACE_ALIASES:
        runtimes["default"] = INTERFACE_ALIASES[default]
    declared = runtimes.get("interfaces")
    if isinstance(declared, dict):
        for alias, name in INTERFACE_ALIASES.items():
            if alias in declared and name not in declared:
                declared[name] = declared.pop(alias)


def load(path: Path, env: Mapping[str, str]) -> RawManifest:
    """Read and parse one manifest. I/O failures are usage errors (exit 2)."""
    file = str(path)
    try:
        if path.is_dir():
            raise UsageError(f"{file}: is a directory", hint="pass the omi.yaml file inside it")
        with open(path, "rb") as fh:  # bounded: /dev/zero or a huge file stops here
            blob = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(
            f"{file}: no such file", hint="run `omibuild init` to create one"
        ) from None
    except OSError as err:
        raise UsageError(f"{file}: cannot read: {err.strerror}") from None
    if len(blob) > MAX_MANIFEST_BYTES:
        raw = RawManifest(file=file, path=path, data=None)
        raw.issues.append(
            Issue(file, 1, 1, "$", "the file is larger than 1 MiB", "is this really omi.yaml?")
        )
        return raw
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raw = RawManifest(file=file, path=path, data=None)
        line = blob.count(b"\n", 0, err.start) + 1
        col = err.start - (blob.rfind(b"\n", 0, err.start) + 1) + 1
        raw.issues.append(
            Issue(
                file,
                line,
                col,
                "$",
                f"not UTF-8 text (byte 0x{blob[err.start]:02x})",
                "save omi.yaml as UTF-8",
            )
        )
        return raw
    return load_text(text.removeprefix("\ufeff"), file=file, path=path, env=env)
