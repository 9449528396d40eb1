"""Model file formats init recognises by their bytes, and what each file records: the
framework's version, the input's width or shape, column names, whether it classifies.

Each reader looks at headers and metadata only (JSON, UBJSON, a text header, a flatbuffer's
feature table, a zip's JSON members), bounded in what it reads; none imports the framework."""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_READ = 256 << 20  # the most of one file a reader holds (a model's JSON, a zip member)
XGBOOST_SUFFIXES = (".json", ".ubj", ".bst", ".model", ".deprecated", ".xgb")
TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".torchscript", ".ptl")


@dataclass
class Format:
    flavor: str
    reason: str
    distribution: str | None = None  # the framework's PyPI name
    version: str | None = None  # as the file records it
    version_source: str = ""  # where: "its version field", ...
    width: int | None = None  # input features (tabular) ...
    shape: list[int] | None = None  # ... or one input's shape, batch first (-1 = any)
    dtype: str = "float"
    names: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


# -- XGBoost -----------------------------------------------------------------------------
def _ubj_value(data: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    """One UBJSON value (XGBoost's .ubj): the subset XGBoost writes."""
    if depth > 64:
        raise ValueError("nested too deep")
    marker = data[pos : pos + 1]
    pos += 1
    ints = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}
    if marker in ints:
        fmt = ints[marker]
        return struct.unpack_from(fmt, data, pos)[0], pos + struct.calcsize(fmt)
    if marker in (b"d", b"D"):
        fmt = ">f" if marker == b"d" else ">d"
        return struct.unpack_from(fmt, data, pos)[0], pos + struct.calcsize(fmt)
    if marker in (b"T", b"F", b"Z"):
        return {b"T": True, b"F": False, b"Z": None}[marker], pos
    if marker == b"S":
        size, pos = _ubj_value(data, pos, depth + 1)
        return data[pos : pos + size].decode("utf-8", "replace"), pos + size
    if marker == b"[":
        return _ubj_array(data, pos, depth)
    if marker == b"{":
        out: dict[str, Any] = {}
        while data[pos : pos + 1] != b"}":
            size, pos = _ubj_value(data, pos, depth + 1)
            key = data[pos : pos + size].decode("utf-8", "replace")
            out[key], pos = _ubj_value(data, pos + size, depth + 1)
        return out, pos + 1
    raise ValueError(f"UBJSON marker {marker!r}")


def _ubj_array(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    kind = None
    if data[pos : pos + 1] == b"$":  # typed: elements share one marker
        kind, pos = data[pos + 1 : pos + 2], pos + 2
    if data[pos : pos + 1] == b"#":
        count, pos = _ubj_value(data, pos + 1, depth + 1)
        items = []
        for _ in range(count):
            if kind is not None:
                value, pos = _typed(data, pos, kind, depth)
            else:
                value, pos = _ubj_value(data, pos, depth + 1)
            items.append(value)
        return items, pos
    items = []
    while data[pos : pos + 1] != b"]":
        value, pos = _ubj_value(data, pos, depth + 1)
        items.append(value)
    return items, pos + 1


def _typed(data: bytes, pos: int, kind: bytes, depth: int) -> tuple[Any, int]:
    """One element of a typed array: its marker is given once, before the count."""
    sizes = {b"i": 1, b"U": 1, b"I": 2, b"l": 4, b"L": 8, b"d": 4, b"D": 8}
    if kind not in sizes:
        raise ValueError(f"typed UBJSON array of {kind!r}")
    value, _ = _ubj_value(kind + data[pos : pos + sizes[kind]], 0, depth + 1)
    return value, pos + sizes[kind]


def _xgboost_doc(path: Path) -> dict[str, Any] | None:
    if path.stat().st_size > MAX_READ:
        return None
    return xgboost_document(path.read_bytes())


def xgboost_document(data: bytes) -> dict[str, Any] | None:
    """An XGBoost model's JSON or UBJSON document (a file's bytes, or the raw model a pickled
    sklearn-API estimator keeps as its booster's handle)."""
    try:
        if data[:1] == b"{" and data[1:2] != b"L" and data[1:2] != b"U":
            doc = json.loads(data)
        else:
            doc, _ = _ubj_value(data, 0)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("Model"), dict):  # a pickle's {Config, Model}
        doc = doc["Model"]
    return doc if isinstance(doc, dict) and isinstance(doc.get("learner"), dict) else None


def xgboost_width(doc: dict[str, Any] | None) -> int | None:
    params = ((doc or {}).get("learner") or {}).get("learner_model_param") or {}
    width = str(params.get("num_feature", ""))
    return int(width) if width.isdigit() else None


def xgboost(path: Path) -> Format | None:
    if path.suffix not in XGBOOST_SUFFIXES:
        return None
    head = _head(path, 64)
    doc = _xgboost_doc(path) if b"learner" in head else None  # XGBoost writes it first
    if doc is None:
        if path.suffix in (".bst", ".model", ".deprecated") and _head(path, 4) == b"binf":
            return Format("xgboost", f"found {path.name}, an XGBoost binary model", "xgboost")
        return None
    learner = doc["learner"]
    version = doc.get("version")
    attributes = learner.get("attributes") or {}
    try:
        kind = json.loads(attributes.get("scikit_learn", "{}")).get("_estimator_type")
    except (ValueError, AttributeError):
        kind = None
    names = learner.get("feature_names") or []
    found = Format(
        "xgboost",
        f"found {path.name}, an XGBoost model",
        "xgboost",
        ".".join(str(v) for v in version) if isinstance(version, list) else None,
        f"the version {path.name} records",
        xgboost_width(doc),
        names=[str(n) for n in names] if isinstance(names, list) else [],
    )
    found.extra["classifier"] = kind == "classifier"
    return found


# -- LightGBM ----------------------------------------------------------------------------
def lightgbm(path: Path) -> Format | None:
    head = _head(path, 64 * 1024)
    if not head.startswith(b"tree\n") or b"\nversion=v" not in head[:200]:
        return None
    fields = dict(
        line.split("=", 1)
        for line in head.decode("utf-8", "replace").splitlines()[:40]
        if "=" in line
    )
    width = (
        int(fields["max_feature_idx"]) + 1 if fields.get("max_feature_idx", "").isdigit() else None
    )
    names = fields.get("feature_names", "").split()
    format_major = fields.get("version", "").removeprefix("v")
    found = Format(
        "lightgbm",
        f"found {path.name}, a LightGBM model",
        "lightgbm",
        width=width,
        names=[] if all(re.fullmatch(r"Column_\d+", n) for n in names) else names,
    )
    found.extra["format_major"] = format_major
    return found


# -- CatBoost ----------------------------------------------------------------------------
class _Flat:
    """Just enough of a flatbuffer reader for CatBoost's model core (model.fbs)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u32(self, pos: int) -> int:
        return int(struct.unpack_from("<I", self.data, pos)[0])

    def i32(self, pos: int) -> int:
        return int(struct.unpack_from("<i", self.data, pos)[0])

    def field(self, table: int, index: int) -> int | None:
        vtable = table - self.i32(table)
        size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def ref(self, table: int, index: int) -> int | None:
        pos = self.field(table, index)
        return pos + self.u32(pos) if pos is not None else None

    def tables(self, table: int, index: int) -> list[int]:
        vector = self.ref(table, index)
        if vector is None:
            return []
        count = self.u32(vector)
        return [vector + 4 + 4 * i + self.u32(vector + 4 + 4 * i) for i in range(count)]

    def string(self, pos: int | None) -> str | None:
        if pos is None:
            return None
        return self.data[pos + 4 : pos + 4 + self.u32(pos)].decode("utf-8", "replace")

    def int_field(self, table: int, index: int, default: int) -> int:
        pos = self.field(table, index)
        return self.i32(pos) if pos is not None else default


def catboost(path: Path) -> Format | None:
    if _head(path, 4) != b"CBM1" or path.stat().st_size > MAX_READ:
        return None
    data = path.read_bytes()
    found = Format("catboost", f"found {path.name}, a CatBoost model", "catboost")
    try:
        flat = _Flat(data[8 : 8 + struct.unpack_from("<I", data, 4)[0]])
        core = flat.u32(0)
        info = {
            flat.string(flat.ref(kv, 0)): flat.string(flat.ref(kv, 1))
            for kv in flat.tables(core, 2)
        }
        trees = flat.ref(core, 1)
        features = []
        if trees is not None:
            for index in (
                4,
                5,
                12,
            ):  # categorical, float and text features: (Index, FlatIndex, ...)
                for table in flat.tables(trees, index):
                    flat_index = flat.int_field(table, 2 if index == 5 else 1, -1)
                    name = flat.string(flat.ref(table, 4 if index == 5 else 2))
                    features.append((flat_index, name or ""))
    except (struct.error, IndexError, UnicodeDecodeError):
        return found
    release = re.search(
        r"CatBoost release (\d+\.\d+(?:\.\d+)?)", info.get("catboost_version_info") or ""
    )
    if release:
        found.version, found.version_source = release.group(1), f"the release {path.name} records"
    if features:
        found.width = max(i for i, _ in features) + 1
        names = [n for _, n in sorted(features)]
        found.names = names if all(names) and len(names) == found.width else []
    try:
        loss = json.loads(info.get("params") or "{}").get("loss_function", {}).get("type", "")
    except (ValueError, AttributeError):
        loss = ""
    found.extra["classifier"] = loss in (
        "Logloss",
        "CrossEntropy",
        "MultiClass",
        "MultiClassOneVsAll",
    )
    return found


# -- PyTorch: TorchScript and torch.export -------------------------------------------------
_TORCH_DTYPES = {6: "float", 7: "float", 8: "float", 4: "int", 5: "int", 3: "int", 12: "bool"}


def _zip_member(archive: zipfile.ZipFile, suffix: str) -> str | None:
    return next((n for n in archive.namelist() if n.endswith(suffix)), None)


def torch(path: Path) -> Format | None:
    if path.suffix not in TORCH_SUFFIXES or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        exported = _zip_member(archive, "/models/model.json")
        if exported is not None and archive.getinfo(exported).file_size < MAX_READ:
            return _exported(path, json.loads(archive.read(exported)))
        members = archive.namelist()
        if _zip_member(archive, "/constants.pkl") and any("/code/__torch__" in n for n in members):
            return Format("pytorch", f"found {path.name}, a TorchScript program", "torch")
    return None  # a state_dict or a pickled module: no program to run without its code


def _exported(path: Path, model: dict[str, Any]) -> Format:
    found = Format("pytorch", f"found {path.name}, a torch.export program", "torch")
    version = str(model.get("torch_version") or "")
    if version:
        found.version = version.split("+")[0]
        found.version_source = f"the torch version {path.name} records"
    graph = (model.get("graph_module") or {}).get("graph") or {}
    values = graph.get("tensor_values") or {}
    specs = ((model.get("graph_module") or {}).get("signature") or {}).get("input_specs") or []
    args = [(s.get("user_input") or {}).get("arg") or {} for s in specs if isinstance(s, dict)]
    users = [a["as_tensor"]["name"] for a in args if "as_tensor" in a]
    if len(users) == 1 and users[0] in values:
        meta = values[users[0]]
        sizes = meta.get("sizes") or []
        found.shape = [int(s["as_int"]) if "as_int" in s and i else -1 for i, s in enumerate(sizes)]
        found.dtype = _TORCH_DTYPES.get(int(meta.get("dtype", 7)), "float")
    return found


# -- Keras ---------------------------------------------------------------------------------
def keras(path: Path) -> Format | None:
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {"metadata.json", "config.json"} <= names:
            return None
        try:
            metadata = json.loads(archive.read("metadata.json"))
            config = (
                json.loads(archive.read("config.json"))
                if archive.getinfo("config.json").file_size < MAX_READ
                else {}
            )
        except ValueError:
            return None
    found = Format("keras", f"found {path.name}, a Keras model", "keras")
    if isinstance(metadata, dict) and metadata.get("keras_version"):
        found.version = str(metadata["keras_version"])
        found.version_source = f"the version {path.name} records"
    layers = ((config.get("config") or {}).get("layers") or []) if isinstance(config, dict) else []
    first = layers[0].get("config", {}) if layers and isinstance(layers[0], dict) else {}
    shape = first.get("batch_shape") or first.get("batch_input_shape")
    if isinstance(shape, list) and shape and all(isinstance(d, int | None) for d in shape[1:]):
        found.shape = [-1, *(d if isinstance(d, int) else 1 for d in shape[1:])]
        dtype = str(first.get("dtype") or "float32")
        found.dtype = "int" if "int" in dtype else "float"
    return found


READERS = (xgboost, lightgbm, catboost, torch, keras)
# the suffixes a file must have for a reader to look at it (others are not read at all)
SUFFIXES = (*XGBOOST_SUFFIXES, ".txt", ".lgb", ".lgbm", ".cbm", *TORCH_SUFFIXES, ".keras")


def recognise(path: Path) -> Format | None:
    """The format of the file at ``path``, if init knows it."""
    for reader in READERS:
        try:
            found = reader(path)
        except (OSError, zipfile.BadZipFile, KeyError, ValueError):
            found = None
        if found is not None:
            return found
    return None
