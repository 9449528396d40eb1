"""Images assembled outside BuildKit: the image BuildKit built (in an OCI layout directory)
plus layers omibuild made itself, appended to every platform's manifest.

BuildKit builds what it is good at (dependencies, runtime, code, omi.json, labels) into a
layout directory kept per manifest under the cache, which its exporter fills with only the
blobs the directory lacks. The model layers never pass through BuildKit: they are appended
here (config ``rootfs.diff_ids`` and ``history``, manifest ``layers``), the manifests are
rewritten, and the result is streamed to the engine (``docker load``) as an OCI archive
holding only the blobs the engine lacks, or written whole as an OCI tarball."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omibuild.contract import OUTPUTS_FILE
from omibuild.planning.plan import OMI
from omibuild.store.layers import LAYER_MEDIA_TYPE, Blob, StagedLayer, TarEntry, tar_chunks

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DOCKER_MANIFEST = MANIFEST_TYPES[1]
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# uncompressed layers keep their tar: Docker and containerd take the plain media type
_DOCKER_GZIP, _DOCKER_TAR = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
_DOCKER_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar+gzip": _DOCKER_GZIP,
    _DOCKER_GZIP: _DOCKER_GZIP,
    "application/vnd.oci.image.layer.v1.tar": _DOCKER_TAR,
    _DOCKER_TAR: _DOCKER_TAR,
}
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
# BuildKit's attestation manifests (SBOM, provenance) name the image manifest they describe
ATTESTS = "vnd.docker.reference.digest"


class LayoutError(Exception):
    """The layout BuildKit wrote is not what omibuild can assemble from."""


@dataclass(frozen=True)
class Appended:
    """A layer to append: its blob, what ``docker history`` says made it, and where its bytes
    come from when a receiver lacks it (a model layer streamed from the files, or bytes)."""

    blob: Blob
    created_by: str
    layer: StagedLayer | None = None
    data: bytes | None = None


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Layout:
    """An OCI image layout directory (the image-spec's ``index.json`` + ``blobs/``)."""

    root: Path
    # blobs omibuild's own layers add: they are never files here, only streamed
    streamed: dict[str, Appended] = field(default_factory=dict)

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_ = digest.partition(":")
        if (
            algorithm != "sha256"
            or len(hex_) != 64
            or not all(c in "0123456789abcdef" for c in hex_)
        ):
            raise LayoutError(f"not a sha256 digest: {digest[:80]!r}")
        return self.root / "blobs" / "sha256" / hex_

    def read_json(self, digest: str, limit: int = 4 << 20) -> dict[str, Any]:
        path = self.blob_path(digest)
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise LayoutError(f"{path} is not the {digest[:19]}… it should be")
        value = json.loads(data)
        if not isinstance(value, dict):
            raise LayoutError(f"{path} is not a JSON object")
        return value

    def put_json(self, obj: Any, media_type: str) -> dict[str, Any]:
        """Write ``obj`` as a blob (atomically, if absent) and return its descriptor."""
        data = _canonical(obj)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def top(self) -> dict[str, Any]:
        """The one image in index.json (BuildKit's exporter names only the one it wrote)."""
        index = json.loads((self.root / "index.json").read_text())
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            raise LayoutError(f"{self.root}/index.json lists {len(manifests)} images, not one")
        return dict(manifests[0])

    # -- appending -----------------------------------------------------------------------
    def append(self, top: dict[str, Any], layers: list[Appended]) -> dict[str, Any]:
        """``top`` with ``layers`` appended to every image manifest it reaches (each platform
        shares the same blobs); attestation manifests, whose statements name the manifests
        replaced, are left out."""
        for a in layers:
            if a.layer is not None or a.data is not None:
                self.streamed[a.blob.digest] = a
        media = top.get("mediaType")
        if media in MANIFEST_TYPES:
            return self._append_manifest(top, layers)
        if media not in INDEX_TYPES:
            raise LayoutError(f"cannot append layers to a {media}")
        index = self.read_json(top["digest"])
        children = []
        for child in index.get("manifests") or []:
            if ATTESTS in (child.get("annotations") or {}):
                continue  # its statements name a manifest that is gone (attest.py makes new)
            if child.get("mediaType") in MANIFEST_TYPES:
                children.append(self._append_manifest(child, layers))
            else:
                children.append(dict(child))
        index["manifests"] = children
        return self._descriptor_like(top, self.put_json(index, media))

    def _append_manifest(self, desc: dict[str, Any], layers: list[Appended]) -> dict[str, Any]:
        manifest = self.read_json(desc["digest"])
        config = self.read_json(manifest["config"]["digest"])
        rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        # uncompressed layers: the diff id (digest of the tar) is the blob's digest
        rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), *(a.blob.digest for a in layers)]
        when = {"created": config["created"]} if "created" in config else {}
        config["history"] = [
            *config.get("history", []),
            *({**when, "created_by": a.created_by, "comment": "omibuild"} for a in layers),
        ]
        manifest["config"] = self.put_json(config, manifest["config"]["mediaType"])
        manifest["layers"] = [
            *manifest.get("layers", []),
            *(
                {"mediaType": a.blob.media_type, "digest": a.blob.digest, "size": a.blob.size}
                for a in layers
            ),
        ]
        return self._descriptor_like(desc, self.put_json(manifest, desc["mediaType"]))

    def indexed(self, top: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
        """``top`` as an image index carrying ``annotations`` (one platform's manifest is put
        in an index of one, as BuildKit's image exporter does, so the index annotations the
        label contract promises are there for every image)."""
        if top.get("mediaType") in INDEX_TYPES:
            return top
        child = {k: v for k, v in top.items() if k != "annotations"}
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPES[0],
            "manifests": [child],
            "annotations": annotations,
        }
        return self.put_json(index, INDEX_TYPES[0])

    def docker_manifest(self, top: dict[str, Any]) -> dict[str, Any]:
        """The one image ``top`` holds as a Docker v2 schema 2 manifest (no index, no
        attestations, no annotations: the config's labels carry the contract), for platforms
        that take nothing else. The config and layers are the same blobs."""
        index = self.read_json(top["digest"]) if top.get("mediaType") in INDEX_TYPES else None
        images = [
            m
            for m in (index["manifests"] if index else [top])
            if m.get("mediaType") in MANIFEST_TYPES and ATTESTS not in (m.get("annotations") or {})
        ]
        if len(images) != 1:
            raise LayoutError(f"a docker-format image is one manifest, not {len(images)}")
        manifest = self.read_json(images[0]["digest"])
        layers = []
        for layer in manifest.get("layers") or []:
            media = _DOCKER_LAYERS.get(layer.get("mediaType", ""))
            if media is None:
                raise LayoutError(f"a docker-format image cannot hold a {layer.get('mediaType')}")
            layers.append({"mediaType": media, "digest": layer["digest"], "size": layer["size"]})
        config = manifest["config"]
        docker = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "digest": config["digest"],
                "size": config["size"],
            },
            "layers": layers,
        }
        return self.put_json(docker, DOCKER_MANIFEST)

    def clear(self) -> None:
        """Forget which image the directory names (BuildKit's exporter adds each build's name
        to index.json); the blobs stay, so the next export writes only new ones."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / "index.json").unlink()

    @staticmethod
    def _descriptor_like(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """The new descriptor, keeping the old one's platform and annotations."""
        return {**{k: v for k, v in old.items() if k in ("platform", "annotations")}, **new}

    # -- reading the graph ---------------------------------------------------------------
    def walk(self, top: dict[str, Any]) -> list[dict[str, Any]]:
        """The descriptor of every blob ``top`` reaches, ``top`` included, each once,
        children before the manifests and indexes that name them."""
        seen: dict[str, dict[str, Any]] = {}

        def visit(desc: dict[str, Any]) -> None:
            digest, media = desc["digest"], desc.get("mediaType")
            if digest in seen:
                return
            if media in INDEX_TYPES:
                for child in self.read_json(digest).get("manifests") or []:
                    visit(child)
            elif media in MANIFEST_TYPES:
                manifest = self.read_json(digest)
                for child in (manifest["config"], *(manifest.get("layers") or [])):
                    visit(child)
            seen[digest] = desc

        visit(top)
        return list(seen.values())

    def step_bytes(self, top: dict[str, Any], marker: str) -> int | None:
        """The size of the layer a build step made, found by ``marker`` in the step's history
        (its ``created_by``), in the first image manifest ``top`` reaches."""
        for desc in self.walk(top):
            if desc.get("mediaType") not in MANIFEST_TYPES:
                continue
            manifest = self.read_json(desc["digest"])
            layer = step_layer(manifest, self.read_json(manifest["config"]["digest"]), marker)
            return None if layer is None else int(layer["size"])
        return None

    def content_bytes(self, top: dict[str, Any]) -> int | None:
        """The config and layers of the first image manifest ``top`` reaches, as stored (what
        a registry holds and a pull moves; `docker images` calls it the content size)."""
        for desc in self.walk(top):
            if desc.get("mediaType") in MANIFEST_TYPES:
                manifest = self.read_json(desc["digest"])
                parts = [manifest["config"], *(manifest.get("layers") or [])]
                return sum(int(p["size"]) for p in parts)
        return None

    def blobs(self, top: dict[str, Any]) -> list[tuple[str, int]]:
        """(digest, size) of every blob ``top`` reaches, as ``walk`` orders them."""
        return [(d["digest"], int(d["size"])) for d in self.walk(top)]

    def push_parts(
        self, top: dict[str, Any]
    ) -> tuple[
        list[tuple[str, int, Callable[[], Iterator[bytes]]]],
        list[tuple[str, bytes, str]],
        tuple[str, bytes, str],
    ]:
        """What a registry push of ``top`` sends: the blobs (configs and layers: digest, size,
        where their bytes come from), the manifests below ``top`` (children first), and
        ``top`` itself (digest, bytes, media type)."""
        blobs: list[tuple[str, int, Callable[[], Iterator[bytes]]]] = []
        manifests: list[tuple[str, bytes, str]] = []
        for desc in self.walk(top):
            digest, media = desc["digest"], desc.get("mediaType", "")
            if media in INDEX_TYPES or media in MANIFEST_TYPES:
                manifests.append((digest, self.blob_path(digest).read_bytes(), media))
            else:
                blobs.append((digest, int(desc["size"]), self._source(digest)))
        return blobs, manifests[:-1], manifests[-1]

    def _source(
        self, digest: str, on_bytes: Callable[[int], None] | None = None
    ) -> Callable[[], Iterator[bytes]]:
        """Where a blob's bytes come from: a model layer's files (the receiver checks the
        layer's digest, so they need no second hash here), bytes held, or the layout."""
        appended = self.streamed.get(digest)
        if appended is not None and appended.layer is not None:
            layer = appended.layer
            return lambda: layer.chunks(on_bytes, verify=False)
        if appended is not None and appended.data is not None:
            data = appended.data
            return lambda: iter((data,))
        path = self.blob_path(digest)
        return lambda: _file_stream(path)

    # -- archives ------------------------------------------------------------------------
    def archive(
        self,
        top: dict[str, Any],
        name: str | None,
        *,
        skip: frozenset[str] = frozenset(),
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[list[TarEntry], int]:
        """The entries of an OCI archive of ``top`` (named ``name``) holding every blob it
        reaches except those in ``skip``, and how many model bytes stream from files."""
        annotations = dict(top.get("annotations") or {})
        if name:
            annotations |= {IMAGE_NAME: name, REF_NAME: name}
        descriptor = {**top, "annotations": annotations} if annotations else dict(top)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor],
        }
        entries = [
            TarEntry("oci-layout", len(_OCI_LAYOUT), data=_OCI_LAYOUT),
            TarEntry("blobs/", directory=True),
            TarEntry("blobs/sha256/", directory=True),
        ]
        streamed = 0
        for digest, size in self.blobs(top):
            if digest in skip:
                continue
            name_ = "blobs/sha256/" + digest.removeprefix("sha256:")
            entries.append(TarEntry(name_, size, stream=self._source(digest, on_bytes)))
            appended = self.streamed.get(digest)
            streamed += appended.layer.model_bytes if appended and appended.layer else 0
        data = _canonical(index)
        entries.append(TarEntry("index.json", len(data), data=data))
        return entries, streamed

    def write_tarball(self, top: dict[str, Any], dest: Path, name: str | None) -> None:
        """The whole image as an OCI tarball at ``dest``, written beside it and renamed."""
        entries, _ = self.archive(top, name)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                for chunk in tar_chunks(entries):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def collect(self, keep: list[dict[str, Any]]) -> int:
        """Remove every blob no image in ``keep`` reaches (the directory is omibuild's own:
        nothing else points into it). Returns the bytes freed."""
        wanted = {digest for top in keep for digest, _ in self.blobs(top)}
        freed = 0
        for path in (self.root / "blobs" / "sha256").glob("*"):
            if "sha256:" + path.name not in wanted:
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    path.unlink()
                    freed += size
        return freed


def layers_image_archive(layers: list[Blob], name: str, platform: str) -> Iterator[TarEntry]:
    """An OCI archive of one image named ``name`` made of ``layers`` alone, without their
    bytes (they are already in the engine's content store, written under a lease): the
    config, manifest and index.json that name them, for containerd's import to record the
    image that keeps them."""
    yield TarEntry("oci-layout", len(_OCI_LAYOUT), data=_OCI_LAYOUT)
    yield TarEntry("blobs/", directory=True)
    yield TarEntry("blobs/sha256/", directory=True)
    os_, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    digests = [layer.digest for layer in layers]
    config = _canonical(
        {"architecture": arch, "os": os_, **({"variant": variant} if variant else {}),
         "config": {}, "rootfs": {"type": "layers", "diff_ids": digests}}
    )  # fmt: skip
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": len(config),
    }
    blobs = [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
             for layer in layers]  # fmt: skip
    manifest = _canonical(
        {"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0], "config": config_desc,
         "layers": blobs}
    )  # fmt: skip
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    for digest, data in ((config_digest, config), (manifest_digest, manifest)):
        yield TarEntry("blobs/sha256/" + digest.removeprefix("sha256:"), len(data), data=data)
    annotations = {IMAGE_NAME: name, REF_NAME: name}
    index = _canonical(
        {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": [
            {"mediaType": MANIFEST_TYPES[0], "digest": manifest_digest, "size": len(manifest),
             "annotations": annotations}]}
    )  # fmt: skip
    yield TarEntry("index.json", len(index), data=index)


def step_layer(
    manifest: dict[str, Any], config: dict[str, Any], marker: str
) -> dict[str, Any] | None:
    """The descriptor of the layer a build step made, found by ``marker`` in the step's
    history entry (its ``created_by``; entries that made no layer skipped)."""
    made = [h for h in config.get("history") or [] if not h.get("empty_layer")]
    for entry, layer in zip(made, manifest.get("layers") or [], strict=False):
        if marker in str(entry.get("created_by", "")):
            return dict(layer)
    return None


def _file_stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            yield chunk


def reset(root: Path) -> None:
    """An unusable layout directory goes whole (it is a cache: BuildKit refills it)."""
    shutil.rmtree(root, ignore_errors=True)


def outputs_layer(outputs: bytes) -> Appended:
    """outputs.json, as the one-file layer appended after the dry prediction."""
    return file_layer(
        f"{OMI}/{OUTPUTS_FILE}", outputs, f"{OUTPUTS_FILE} (the dry prediction's answer)"
    )


def file_layer(path: str, data: bytes, what: str) -> Appended:
    """One file (mode 0444, owner 0:0, its parents 0755) as a layer of its own."""
    parts = path.strip("/").split("/")
    entries = [TarEntry("/".join(parts[:n]) + "/", directory=True) for n in range(1, len(parts))]
    entries.append(TarEntry("/".join(parts), len(data), data=data))
    tar = b"".join(tar_chunks(entries))
    blob = Blob("sha256:" + hashlib.sha256(tar).hexdigest(), len(tar))
    return Appended(blob, f"omibuild: {what}", data=tar)
