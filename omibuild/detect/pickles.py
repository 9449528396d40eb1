"""What a pickle needs, read without running it: the modules it imports and the facts its
objects record (``_sklearn_version``, ``n_features_in_``, ``feature_names_in_``).

A pickle is a small stack program. This reads it with the standard library's own opcode
loop (``pickle._Unpickler``), but every opcode that would import, call or instantiate
something only records what it names and builds an inert ``Made`` in its place: no module
is imported, no constructor or ``__setstate__`` runs, so a model file from anywhere is safe
to read. joblib's files are pickles too, with each numpy array's bytes written raw behind
its ``NumpyArrayWrapper``; those bytes are skipped as joblib's own reader reads them.
Large byte strings are skipped, not held, so memory stays small whatever the file's size."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omibuild.detect.formats import xgboost_document, xgboost_width

MAX_OPCODES = 20_000_000  # a bound on the work; a real model has far fewer
BIG_BYTES = 1 << 20  # byte strings above this are skipped, not kept
_CHUNK = 1 << 20


class PickleScanError(Exception):
    """The file is not a pickle this reader understands."""


@dataclass(frozen=True)
class Global:
    """A name the pickle imports: ``module.name``."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Made:
    """What calling or instantiating a Global would have made: its arguments and state,
    and what APPENDS / SETITEMS added to it."""

    of: Any
    args: tuple[Any, ...] = ()
    state: Any = None
    items: list[Any] = field(default_factory=list)

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def add(self, item: Any) -> None:
        self.items.append(item)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def named(self, *names: str) -> bool:
        return isinstance(self.of, Global) and self.of.name in names

    def attrs(self) -> dict[str, Any]:
        """The instance dict BUILD gave it (the dict half of a (dict, slots) state)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | None):
            state = state[0]
        return state if isinstance(state, dict) else {}


@dataclass(frozen=True)
class Skipped:
    """A byte string too large to keep."""

    size: int


@dataclass
class Scan:
    """What a pickle file showed."""

    globals: set[Global] = field(default_factory=set)
    root: Any = None
    sklearn_versions: set[str] = field(default_factory=set)
    complete: bool = True  # False: the reader stopped early (the facts found so far stand)

    @property
    def modules(self) -> set[str]:
        return {g.module for g in self.globals}


_PURE: Any = pickle._Unpickler  # the pure-Python opcode loop (typeshed does not declare it)


class _Reader(_PURE):
    """``pickle._Unpickler`` with every effectful opcode made inert (see the module doc)."""

    dispatch: dict[int, Any] = dict(_PURE.dispatch)

    def __init__(self, raw: IO[bytes], scan: Scan) -> None:
        super().__init__(raw)
        self.raw = raw
        self.scan = scan
        self.opcodes = 0

    def find_class(self, module: str, name: str) -> Global:
        found = Global(module, name)
        self.scan.globals.add(found)
        return found

    def persistent_load(self, pid: Any) -> Made:  # torch's storages, for one
        return Made(Global("<persistent>", ""), (pid,))

    def load(self) -> Any:
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack: list[Any] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError("the pickle ends before its STOP opcode")
                self.opcodes += 1
                if self.opcodes > MAX_OPCODES:
                    raise PickleScanError(f"more than {MAX_OPCODES} opcodes")
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    # -- the inert versions --------------------------------------------------------------
    def _reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = Made(self.stack[-1], tuple(args) if isinstance(args, tuple) else ())

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(Made(cls, tuple(args) if isinstance(args, tuple) else ()))

    def _newobj_ex(self) -> None:
        self.stack.pop()  # kwargs
        self._newobj()

    def _inst(self) -> None:
        module = self.readline()[:-1].decode("utf-8", "replace")
        name = self.readline()[:-1].decode("utf-8", "replace")
        self.append(Made(self.find_class(module, name), tuple(self.pop_mark())))

    def _obj(self) -> None:
        args = self.pop_mark()
        self.append(Made(args[0], tuple(args[1:])))

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, Made):
            return
        inst.state = state
        attrs = inst.attrs()
        version = attrs.get("_sklearn_version")
        if isinstance(version, str):
            self.scan.sklearn_versions.add(version)
        if inst.named("NumpyArrayWrapper") and "joblib" in str(getattr(inst.of, "module", "")):
            self.stack[-1] = self._joblib_array(attrs)

    def _joblib_array(self, attrs: dict[str, Any]) -> Made:
        """Skip the array joblib wrote raw after this wrapper, as joblib's reader reads it."""
        dtype = attrs.get("dtype")
        shape = attrs.get("shape")
        count = 1
        for dim in shape if isinstance(shape, tuple) else ():
            count *= int(dim) if isinstance(dim, int) else 0
        itemsize, has_objects = _dtype_size(dtype)
        array = Made(Global("numpy", "ndarray"), (shape,))
        if has_objects:  # written as a whole pickle of its own (protocol 2: no frames)
            nested = _Reader(self.raw, self.scan)
            array.state = nested.load()
            self.opcodes += nested.opcodes
            return array
        if attrs.get("numpy_array_alignment_bytes") is not None:
            padding = self.raw.read(1)
            if padding:
                _skip(self.raw.read, padding[0])
        _skip(self.raw.read, count * itemsize)
        return array

    def _big(self, size: int, make: type) -> None:
        if size > BIG_BYTES:
            _skip(self.read, size)
            self.append(Skipped(size))
        else:
            data = self.read(size)
            self.append(make(data) if make is not bytes else data)

    def _binbytes(self) -> None:
        self._big(struct.unpack("<I", self.read(4))[0], bytes)

    def _binbytes8(self) -> None:
        self._big(struct.unpack("<Q", self.read(8))[0], bytes)

    def _bytearray8(self) -> None:
        self._big(struct.unpack("<Q", self.read(8))[0], bytearray)

    def _binunicode8(self) -> None:
        size = struct.unpack("<Q", self.read(8))[0]
        if size > BIG_BYTES:
            _skip(self.read, size)
            self.append(Skipped(size))
        else:
            self.append(str(self.read(size), "utf-8", "surrogatepass"))

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.INST[0]] = _inst
    dispatch[pickle.OBJ[0]] = _obj
    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.BINBYTES[0]] = _binbytes
    dispatch[pickle.BINBYTES8[0]] = _binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = _bytearray8
    dispatch[pickle.BINUNICODE8[0]] = _binunicode8


def _skip(read: Any, size: int) -> None:
    while size > 0:
        got = read(min(size, _CHUNK))
        if not got:
            raise EOFError("the file ends inside an array")
        size -= len(got)


def _dtype_size(dtype: Any) -> tuple[int, bool]:
    """(itemsize, holds objects) of a numpy dtype as its pickle spells it:
    ``dtype('f8', False, True)`` built with ``(3, '<', None, names, fields, elsize, ...)``."""
    if not isinstance(dtype, Made) or not dtype.args or not isinstance(dtype.args[0], str):
        raise PickleScanError("an array without a dtype this reader knows")
    code = dtype.args[0]
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    flags = state[7] if len(state) > 7 and isinstance(state[7], int) else 0
    has_objects = code.startswith("O") or bool(flags & 1)  # NPY_ITEM_REFCOUNT
    if len(state) > 5 and isinstance(state[5], int) and state[5] > 0:
        return state[5], has_objects
    digits = re.search(r"\d+", code)
    if digits is None:
        raise PickleScanError(f"a dtype without a size: {code!r}")
    size = int(digits.group())
    return (size * 4 if code.startswith("U") else size), has_objects


_MAGIC: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", lambda fh: gzip.GzipFile(fileobj=fh)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ", lzma.LZMAFile),
    (b"]\x00\x00", lzma.LZMAFile),
)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """The file's pickle stream, through joblib's compressors where it is compressed."""
    with open(path, "rb") as fh:
        head = fh.read(6)
        fh.seek(0)
        for magic, opener in _MAGIC:
            if head.startswith(magic):
                with opener(fh) as stream:
                    yield stream
                return
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            yield io.BufferedReader(_ZlibReader(fh))
            return
        if head.startswith(b"ZF"):  # joblib < 0.10's own zlib container
            raise PickleScanError("joblib's pre-0.10 compressed format")
        yield fh


class _ZlibReader(io.RawIOBase):
    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.z, self.buf = fh, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            chunk = self.fh.read(_CHUNK)
            if not chunk:
                self.buf = self.z.flush()
                break
            self.buf = self.z.decompress(chunk)
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


def scan_pickle(path: Path) -> Scan:
    """What the pickle (or joblib file) at ``path`` imports and records. A file this reader
    cannot follow to the end keeps what it showed before (``complete`` False); one that is
    not a pickle at all raises PickleScanError."""
    scan = Scan()
    try:
        with _open(path) as fh:
            reader = _Reader(fh, scan)
            scan.root = reader.load()
    except (PickleScanError, pickle.UnpicklingError, EOFError, ValueError, struct.error,
            KeyError, IndexError, TypeError, AttributeError, OSError, lzma.LZMAError,
            zlib.error, RecursionError) as exc:  # fmt: skip
        if not scan.globals:
            raise PickleScanError(
                f"{path.name}: not a pickle this reader can follow ({exc})"
            ) from None
        scan.complete = False
    return scan


def walk(obj: Any, depth: int = 0) -> Iterator[Made]:
    """Every Made reachable from ``obj`` (bounded depth)."""
    if depth > 60:
        return
    if isinstance(obj, Made):
        yield obj
        children: list[Any] = [*obj.args, obj.state, *obj.items]
    elif isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    else:
        return
    for child in children:
        yield from walk(child, depth + 1)


def strings(array: Any) -> list[str] | None:
    """The strings of a pickled numpy object array (``feature_names_in_``), or None."""
    if not isinstance(array, Made):
        return None
    state = array.state
    if isinstance(state, Made):  # joblib: the nested pickle of the array
        return strings(state)
    if isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], list):
        values = state[4]
        return values if all(isinstance(v, str) for v in values) else None
    return None


def _booster_handle(booster: Any) -> Any:
    return booster.attrs().get("handle") if isinstance(booster, Made) else None


def _bytes(value: Any) -> bytes | None:
    """The bytes a pickled ``bytes`` or ``bytearray`` holds (protocols spell them apart)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, Made) and value.named("bytearray", "bytes") and value.args:
        first = value.args[0]
        if isinstance(first, bytes | bytearray):
            return bytes(first)
        if isinstance(first, str):  # protocol 2 spells bytes as latin-1 text
            return first.encode("latin-1", "replace")
    return None


def input_width(root: Any) -> tuple[int | None, list[str] | None]:
    """(number of input features, their names) of a fitted sklearn-style estimator: its own
    ``n_features_in_`` / ``feature_names_in_``, else its first step's (a Pipeline) or its
    best estimator's (a search)."""
    seen = 0
    node = root
    while isinstance(node, Made) and seen < 20:
        seen += 1
        attrs = node.attrs()
        width = attrs.get("n_features_in_")
        names = strings(attrs.get("feature_names_in_"))
        if isinstance(width, int):
            return width, names
        if "_n_features" in attrs and isinstance(attrs["_n_features"], int):  # LightGBM
            return attrs["_n_features"], names
        raw = _bytes(_booster_handle(attrs.get("_Booster")))  # XGBoost's sklearn API
        if raw is not None:
            return xgboost_width(xgboost_document(raw)), names
        steps = attrs.get("steps")
        if isinstance(steps, list) and steps:
            first = next(
                (s[1] for s in steps if isinstance(s, tuple) and len(s) == 2 and s[1] not in
                 ("passthrough", None)),
                None,
            )  # fmt: skip
            node = first
            continue
        node = attrs.get("best_estimator_") or attrs.get("estimator")
    return None, None


MAX_SKOPS_SCHEMA = 64 << 20


def scan_skops(path: Path) -> Scan:
    """What a skops file names: its schema.json lists every object's module and class, and
    keeps each attribute as data (skops never pickles)."""
    scan = Scan()
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("schema.json")
            if info.file_size > MAX_SKOPS_SCHEMA:
                raise PickleScanError(f"{path.name}: schema.json over {MAX_SKOPS_SCHEMA} bytes")
            schema = json.loads(archive.read(info))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PickleScanError(f"{path.name}: not a skops file ({exc})") from None
    scan.root = _skops_node(schema, scan, 0)
    return scan


def _skops_node(node: Any, scan: Scan, depth: int) -> Any:
    """A skops schema node as the Made/plain values scan_pickle gives (bounded depth)."""
    if depth > 100 or not isinstance(node, dict):
        return None
    module, cls = node.get("__module__"), node.get("__class__")
    content = node.get("content")
    if node.get("is_json") and isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return None
    if isinstance(module, str) and isinstance(cls, str) and module != "builtins":
        scan.globals.add(Global(module, cls))
    if isinstance(content, dict) and node.get("__loader__") in ("DictNode", "ObjectNode"):
        inner = content.get("content") if "content" in content else content
        values = {
            k: _skops_node(v, scan, depth + 1) for k, v in (inner or {}).items()
            if isinstance(k, str)
        }  # fmt: skip
        version = values.get("_sklearn_version")
        if isinstance(version, str):
            scan.sklearn_versions.add(version)
        if node.get("__loader__") == "DictNode" and module == "builtins":
            return values
        return Made(Global(str(module), str(cls)), state=values)
    if isinstance(content, list):
        items = [_skops_node(v, scan, depth + 1) for v in content]
        return tuple(items) if cls == "tuple" else items
    return None
