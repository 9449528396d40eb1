"""Model layers made by omibuild: deterministic, uncompressed tars of the model files.

A model layer is a function of its files' paths and digests only: entries sorted by name,
the parent directories first, owner 0:0 with no user or group names, mtime 0, directories
0755 and files 0444, PAX headers (from ``tarfile``) where a name needs them. So the same files
make the same layer digest on every machine, whatever the base, dependencies or code of the
image around it.

The tar itself is never stored. Its digest and size are memoised under
``<cache>/layers/<key>.json`` (the key is the files' paths, sizes and digests), and the bytes
stream from the verified model files whenever a receiver lacks the layer: the engine's
``docker load``, a registry, an OCI file. Each file is hashed as it passes and a file that is
not what the plan says stops the stream, so a receiver, which checks the layer digest itself,
never commits a wrong layer; an interrupted stream leaves nothing (a memo is written, by
rename, only after a whole pass). Keeping a copy would cost a second durable write of every
model byte, and the source cache already holds them."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache, atomic_write
from omibuild.store.hashing import hashed_here, stream_digest

FORMAT = "omibuild-layer/2"  # bump when the tar layout changes: old memos are then unused
# /models: where KServe's modelcars and image volumes (subPath: models) expect the files
MODEL_ROOT = "models"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CHUNK = 4 << 20  # measured: 1 MiB reads cost 8% more time on a 1 GiB layer, 16 MiB no less
_BLOCK = tarfile.BLOCKSIZE
_END = b"\0" * (2 * _BLOCK)


class LayerFileChanged(Exception):
    """A model file is not what the plan says: its bytes changed after planning."""


def _header(name: str, size: int, *, directory: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o444
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _padding(size: int) -> int:
    return -size % _BLOCK


@dataclass(frozen=True)
class TarEntry:
    """One tar entry: a name, a size and where its bytes come from (none for a directory)."""

    name: str
    size: int = 0
    directory: bool = False
    data: bytes | None = None  # small entries held in memory
    path: Path | None = None  # a file streamed from disk
    sha256: str | None = None  # what that file must hash to
    stream: Callable[[], Iterator[bytes]] | None = None  # anything else, exactly size bytes

    @cached_property
    def header(self) -> bytes:
        return _header(self.name, self.size, directory=self.directory)

    @property
    def stored_size(self) -> int:
        return len(self.header) + self.size + _padding(self.size)


def tar_size(entries: Iterable[TarEntry]) -> int:
    return sum(e.stored_size for e in entries) + len(_END)


def tar_chunks(
    entries: Iterable[TarEntry],
    on_bytes: Callable[[int], None] | None = None,
    *,
    verify: bool = True,
    sha1s: dict[str, str] | None = None,
) -> Iterator[bytes]:
    """The tar of ``entries``, in chunks. With ``verify``, each file is checked against its
    sha256 as it passes (without, only its size: a receiver that checks the whole tar's
    digest needs no second hash of every file). ``sha1s``, when given, fills with each
    file's SHA1 (path under the model root -> hex), which SPDX asks of every file."""
    for entry in entries:
        yield entry.header
        if entry.data is not None:
            yield entry.data
        elif entry.path is not None:
            yield from _file_chunks(entry, on_bytes, verify, sha1s)
        elif entry.stream is not None:
            yield from entry.stream()
        if pad := _padding(entry.size):
            yield b"\0" * pad
    yield _END


def _file_chunks(
    entry: TarEntry,
    on_bytes: Callable[[int], None] | None,
    verify: bool,
    sha1s: dict[str, str] | None = None,
) -> Iterator[bytes]:
    assert entry.path is not None
    sha1 = hashlib.sha1(usedforsecurity=False) if sha1s is not None else None
    seen = 0
    with open(entry.path, "rb") as fh:
        status = os.fstat(fh.fileno())
        # the plan read and hashed this very file a moment ago, in this process, and it has
        # not changed since (store/hashing.py READ_HERE): its status is checked again below
        # instead of a second hash
        vouched = verify and entry.sha256 is not None and hashed_here(status) == entry.sha256
        digest = hashlib.sha256() if verify and entry.sha256 and not vouched else None
        while chunk := fh.read(min(CHUNK, entry.size - seen + 1)):
            seen += len(chunk)
            if seen > entry.size:
                break
            if digest is not None:
                digest.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk
        if vouched and hashed_here(os.fstat(fh.fileno())) != entry.sha256:
            seen = -1  # written to while it was read
    rel = entry.name.removeprefix(MODEL_ROOT + "/")
    if seen != entry.size:
        raise LayerFileChanged(
            f"model file {rel} is not the {entry.size} bytes the plan says (it changed after "
            "planning); nothing was tagged (hint: run again: the file is hashed anew)"
        )
    if digest is not None and (actual := digest.hexdigest()) != entry.sha256:
        raise LayerFileChanged(
            f"model file {rel} has sha256 {actual[:12]}…, not {str(entry.sha256)[:12]}… as the "
            "plan says (omi.lock or omibuild's cache was wrong, or the file changed); nothing "
            "was tagged (hint: run again: the file is hashed anew)"
        )
    if sha1s is not None and sha1 is not None:
        sha1s[rel] = sha1.hexdigest()


@dataclass(frozen=True)
class StagedLayer:
    """A model layer: where its files are on this machine, and what they must be."""

    files: tuple[ModelFile, ...]
    root: Path  # the directory holding the files (staged hard links, or the repository)

    @cached_property
    def key(self) -> str:
        """What the layer's bytes depend on: the format and each file's path, size, digest."""
        h = hashlib.sha256(FORMAT.encode() + b"\0" + MODEL_ROOT.encode() + b"\n")
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
        return h.hexdigest()

    @cached_property
    def entries(self) -> tuple[TarEntry, ...]:
        names: dict[str, TarEntry] = {}
        for f in self.files:
            parts = PurePosixPath(MODEL_ROOT, f.path).parts
            for depth in range(1, len(parts)):
                name = "/".join(parts[:depth]) + "/"
                names.setdefault(name, TarEntry(name, directory=True))
            name = "/".join(parts)
            names[name] = TarEntry(name, f.size, path=self.root / f.path, sha256=f.sha256)
        return tuple(names[n] for n in sorted(names))

    @cached_property
    def size(self) -> int:
        return tar_size(self.entries)

    @property
    def model_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def chunks(
        self,
        on_bytes: Callable[[int], None] | None = None,
        *,
        verify: bool = True,
        sha1s: dict[str, str] | None = None,
    ) -> Iterator[bytes]:
        return tar_chunks(self.entries, on_bytes, verify=verify, sha1s=sha1s)


@dataclass(frozen=True)
class Blob:
    """A layer as a registry or the engine names it."""

    digest: str  # sha256:<hex>
    size: int
    media_type: str = LAYER_MEDIA_TYPE


def memo_path(cache: Cache, layer: StagedLayer) -> Path:
    return cache.root / "layers" / f"{layer.key}.json"


def sha1_memo_path(cache: Cache, layer: StagedLayer) -> Path:
    return cache.root / "layers" / f"{layer.key}.sha1.json"


def known_sha1s(cache: Cache, layer: StagedLayer) -> dict[str, str] | None:
    """Each file's SHA1 as a whole earlier pass over the layer recorded it (the key names
    each file's sha256, so the memo cannot outlive a change)."""
    try:
        sha1s = json.loads(sha1_memo_path(cache, layer).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sha1s, dict) or set(sha1s) != {f.path for f in layer.files}:
        return None
    return {str(k): str(v) for k, v in sha1s.items()}


def remember_sha1s(cache: Cache, layer: StagedLayer, sha1s: dict[str, str]) -> None:
    path = sha1_memo_path(cache, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(sha1s, sort_keys=True))


def known_blob(cache: Cache, layer: StagedLayer) -> Blob | None:
    """The layer's digest when a whole earlier pass over the same files recorded it."""
    try:
        memo = json.loads(memo_path(cache, layer).read_text())
        blob = Blob(str(memo["digest"]), int(memo["size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return blob if blob.size == layer.size and blob.digest.startswith("sha256:") else None


def remember_blob(
    cache: Cache, layer: StagedLayer, digest: str, pushed_to: tuple[str, ...] = ()
) -> Blob:
    """Record a digest learnt by a whole pass over the layer (written by rename), and the
    repositories (``host/path``) it was last pushed to, which a registry can mount it from."""
    blob = Blob(digest, layer.size)
    path = memo_path(cache, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    memo = {"digest": blob.digest, "size": blob.size, "pushed_to": list(pushed_to[-20:])}
    atomic_write(path, json.dumps(memo) + "\n")
    return blob


def pushed_to(cache: Cache, layer: StagedLayer) -> tuple[str, ...]:
    try:
        where = json.loads(memo_path(cache, layer).read_text()).get("pushed_to") or []
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(str(w) for w in where if isinstance(w, str))


def layer_blob(
    cache: Cache, layer: StagedLayer, on_bytes: Callable[[int], None] | None = None
) -> tuple[Blob, bool]:
    """(the layer's digest and size, whether its files were read to learn them). A model seen
    before costs nothing; a new one costs one read of its files, which also verifies them."""
    if (blob := known_blob(cache, layer)) is not None:
        return blob, False
    return remember_blob(cache, layer, f"sha256:{stream_digest(layer.chunks(on_bytes))}"), True
