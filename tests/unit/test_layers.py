"""Model layers made by omibuild (store/layers.py) and the images assembled from them
(engine/oci.py): deterministic bytes, digests known from the files alone, nothing trusted
after an interrupted pass."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from omibuild.engine.oci import ATTESTS, Appended, Layout, layers_image_archive
from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache
from omibuild.store.layers import (
    MODEL_ROOT,
    Blob,
    LayerFileChanged,
    StagedLayer,
    known_blob,
    layer_blob,
    memo_path,
    tar_chunks,
)


def _model(root: Path, files: dict[str, bytes]) -> tuple[ModelFile, ...]:
    out = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(ModelFile(rel, len(data), hashlib.sha256(data).hexdigest()))
    return tuple(out)


FILES = {
    "weights/shard-1.bin": os.urandom(70_000),
    "config.json": b'{"a": 1}',
    "weights/shard-0.bin": os.urandom(1_000),
    "a" * 120 + "/long-name.txt": b"a name longer than ustar's 100 bytes",
    "ünïcode.txt": b"x",
}


def _bytes(layer: StagedLayer) -> bytes:
    return b"".join(layer.chunks())


def test_the_layer_tar_is_fixed_by_the_files_alone(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    files = _model(one, FILES)
    _model(two, dict(reversed(FILES.items())))  # written in another order, at other times
    os.utime(two / "config.json", (12345, 12345))
    os.chmod(two / "config.json", 0o600)
    a, b = _bytes(StagedLayer(files, one)), _bytes(StagedLayer(tuple(reversed(files)), two))
    assert a == b and len(a) == StagedLayer(files, one).size
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names[0] == MODEL_ROOT == "models"  # parents before their children
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
            assert m.mode == (0o755 if m.isdir() else 0o444)
        for rel, data in FILES.items():
            member = tar.extractfile(f"{MODEL_ROOT}/{rel}")
            assert member is not None and member.read() == data


def test_the_digest_is_the_same_with_fresh_caches_and_a_seen_model_is_not_read(
    tmp_path: Path,
) -> None:
    files = _model(tmp_path / "m", FILES)
    layer = StagedLayer(files, tmp_path / "m")
    first, read = layer_blob(Cache(tmp_path / "c1", hold=False), layer)
    second, read2 = layer_blob(Cache(tmp_path / "c2", hold=False), layer)
    assert read and read2 and first == second
    assert first.digest == "sha256:" + hashlib.sha256(_bytes(layer)).hexdigest()
    # seen before: known from the memo, without opening a file
    (tmp_path / "m" / "config.json").unlink()
    assert layer_blob(Cache(tmp_path / "c1", hold=False), layer) == (first, False)


def test_files_hashed_side_by_side_keep_their_own_digests_and_the_memo(tmp_path: Path) -> None:
    data = {f"shard-{i}.bin": os.urandom(300_000 + i) for i in range(7)}
    _model(tmp_path / "m", data)
    paths = [tmp_path / "m" / name for name in data]
    seen: list[int] = []
    cache = Cache(tmp_path / "c", hold=False)
    got = cache.hash_locals(paths, seen.append)
    assert got == [hashlib.sha256(b).hexdigest() for b in data.values()]
    assert sum(seen) == sum(map(len, data.values()))
    cache.save()  # the memo vouches for each file by its own stat, whichever thread read it
    seen.clear()
    assert Cache(tmp_path / "c", hold=False).hash_locals(paths, seen.append) == got
    assert not seen


def test_a_changed_file_stops_the_stream_and_leaves_no_memo(tmp_path: Path) -> None:
    files = _model(tmp_path / "m", FILES)
    (tmp_path / "m" / "weights" / "shard-1.bin").write_bytes(os.urandom(70_000))  # same size
    cache = Cache(tmp_path / "c", hold=False)
    layer = StagedLayer(files, tmp_path / "m")
    with pytest.raises(LayerFileChanged, match=r"weights/shard-1\.bin has sha256 "):
        layer_blob(cache, layer)
    assert known_blob(cache, layer) is None and not memo_path(cache, layer).exists()
    (tmp_path / "m" / "config.json").write_bytes(b"longer than it was")
    with pytest.raises(LayerFileChanged, match=r"config\.json is not the \d+ bytes"):
        b"".join(StagedLayer(files, tmp_path / "m").chunks(verify=False))  # size is always checked


class _CountedSha256:
    """hashlib for omibuild.store.layers, counting the sha256 objects the layer pass makes."""

    def __init__(self) -> None:
        self.made = 0
        self.sha1 = hashlib.sha1

    def sha256(self, *args: bytes) -> Any:
        self.made += 1
        return hashlib.sha256(*args)


def test_a_file_hashed_here_and_unchanged_is_not_hashed_again_but_a_write_still_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's hash of a file, read by this very process after the file settled, vouches
    for it in the layer's pass while its status (size, mtime, ctime) is unchanged: no second
    hash. A file changed after that hash, or while the layer reads it, still stops the pass;
    a file hashed right after it was written is hashed again."""
    import omibuild.store.layers as layers_module
    from omibuild.store.hashing import SETTLED_NS, sha256_file

    files = _model(tmp_path / "m", {"w.bin": os.urandom(300_000), "c.json": b"{}"})
    time.sleep(SETTLED_NS / 1e9 + 0.02)
    for f in files:
        assert sha256_file(tmp_path / "m" / f.path) == f.sha256
    counted = _CountedSha256()
    monkeypatch.setattr(layers_module, "hashlib", counted)
    layer = StagedLayer(files, tmp_path / "m")
    assert b"".join(layer.chunks()) == b"".join(layer.chunks(verify=False))
    assert counted.made == 0

    # written after the plan hashed it, same size: hashed again, and refused
    (tmp_path / "m" / "w.bin").write_bytes(os.urandom(300_000))
    with pytest.raises(LayerFileChanged, match=r"w\.bin has sha256 "):
        b"".join(layer.chunks())
    assert counted.made == 1

    # written while the layer's pass reads it
    files = _model(tmp_path / "n", {"w.bin": os.urandom(300_000)})
    time.sleep(SETTLED_NS / 1e9 + 0.02)
    sha256_file(tmp_path / "n" / "w.bin")
    stream = StagedLayer(files, tmp_path / "n").chunks()
    while len(next(stream)) <= 512:  # headers, until the file's first bytes
        pass
    with open(tmp_path / "n" / "w.bin", "r+b") as fh:
        fh.write(b"x")
    with pytest.raises(LayerFileChanged, match=r"w\.bin is not the 300000 bytes"):
        b"".join(stream)

    # hashed the moment it was written: not vouched for, hashed again
    files = _model(tmp_path / "o", {"w.bin": os.urandom(1000)})
    sha256_file(tmp_path / "o" / "w.bin")
    made = counted.made
    b"".join(StagedLayer(files, tmp_path / "o").chunks())
    assert counted.made == made + 1


def test_staging_s_own_hard_link_keeps_the_read_vouching_and_a_write_does_not(
    tmp_path: Path,
) -> None:
    """Staging hard-links each model file into the build context, which moves the file's
    ctime; linked_here carries the plan's read across that link, and only that."""
    from omibuild.store.hashing import SETTLED_NS, hashed_here, linked_here, sha256_file

    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(4096))
    time.sleep(SETTLED_NS / 1e9 + 0.02)
    digest = sha256_file(src)
    before = os.stat(src)
    os.link(src, tmp_path / "staged.bin")
    assert hashed_here(os.stat(tmp_path / "staged.bin")) is None  # the link moved the ctime
    linked_here(before, os.stat(tmp_path / "staged.bin"))
    assert hashed_here(os.stat(tmp_path / "staged.bin")) == digest

    time.sleep(0.02)
    before = os.stat(src)
    src.write_bytes(os.urandom(4096))  # written between the status and the link
    os.link(src, tmp_path / "again.bin")
    linked_here(before, os.stat(tmp_path / "again.bin"))
    assert hashed_here(os.stat(tmp_path / "again.bin")) is None


def test_the_stat_memo_outlives_staging_s_links_but_not_a_write(tmp_path: Path) -> None:
    """A build links the model files into a new context and unlinks the old one's, which
    moves their ctime: Cache.relinked keeps the memo vouching (the next apply reads nothing);
    a file written meanwhile is hashed again."""
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(8192))
    cache = Cache(tmp_path / "c", hold=False)
    seen: list[int] = []
    digest = cache.hash_local(src, seen.append)
    before = os.stat(src)
    os.link(src, tmp_path / "new-context.bin")
    (tmp_path / "new-context.bin").unlink()  # the old context's link going
    assert os.stat(src).st_ctime_ns != before.st_ctime_ns
    cache.relinked(src, before)
    cache.save()
    seen.clear()
    assert Cache(tmp_path / "c", hold=False).hash_local(src, seen.append) == digest
    assert not seen  # no read

    time.sleep(0.02)
    before = os.stat(src)
    src.write_bytes(os.urandom(8192))
    cache.relinked(src, before)
    cache.save()
    assert Cache(tmp_path / "c", hold=False).hash_local(src, seen.append) != digest
    assert sum(seen) == 8192


def test_an_interrupted_pass_leaves_nothing_trusted(tmp_path: Path) -> None:
    files = _model(tmp_path / "m", FILES)
    cache = Cache(tmp_path / "c", hold=False)
    layer = StagedLayer(files, tmp_path / "m")

    class Stop(Exception):
        pass

    def stop(_n: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        layer_blob(cache, layer, on_bytes=stop)
    assert known_blob(cache, layer) is None
    memo_path(cache, layer).parent.mkdir(parents=True, exist_ok=True)
    memo_path(cache, layer).write_text('{"digest": "sha256:00", "size": 1}')  # torn or stale
    assert known_blob(cache, layer) is None
    blob, read = layer_blob(cache, layer)
    assert read and known_blob(cache, layer) == blob


BASE = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar",
    "digest": "sha256:" + "1" * 64,
    "size": 1,
}


def _put(layout: Layout, obj: dict, media: str) -> dict:  # type: ignore[type-arg]
    return layout.put_json(obj, media)


def test_layers_append_to_every_platform_and_stale_attestations_go(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "l")
    manifests = []
    for arch in ("amd64", "arm64"):
        config = _put(
            layout,
            {
                "architecture": arch,
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
            },
            "application/vnd.oci.image.config.v1+json",
        )
        manifest = _put(
            layout,
            {"schemaVersion": 2, "config": config, "layers": [BASE]},
            "application/vnd.oci.image.manifest.v1+json",
        )
        manifests.append(manifest | {"platform": {"architecture": arch, "os": "linux"}})
    attestation = _put(
        layout, {"schemaVersion": 2, "config": config, "layers": []}, manifests[0]["mediaType"]
    )
    attestation["annotations"] = {ATTESTS: manifests[0]["digest"]}
    index = _put(
        layout,
        {"schemaVersion": 2, "manifests": [*manifests, attestation]},
        "application/vnd.oci.image.index.v1+json",
    )
    files = _model(tmp_path / "m", {"w.bin": b"weights"})
    layer = StagedLayer(files, tmp_path / "m")
    blob, _ = layer_blob(Cache(tmp_path / "c", hold=False), layer)
    top = layout.append(index, [Appended(blob, "omibuild: model layer 1/1", layer=layer)])
    new = layout.read_json(top["digest"])
    images = new["manifests"]  # the attestation named a manifest that is gone: it went too
    assert len(images) == 2 and all(ATTESTS not in (m.get("annotations") or {}) for m in images)
    for image in images:
        manifest = layout.read_json(image["digest"])
        config = layout.read_json(manifest["config"]["digest"])
        assert manifest["layers"][-1]["digest"] == blob.digest  # one blob, every platform
        assert config["rootfs"]["diff_ids"][-1] == blob.digest
        assert config["history"][-1]["created_by"] == "omibuild: model layer 1/1"
    # the archive streams the model layer from the files, once, and leaves out what is skipped
    entries, streamed = layout.archive(top, "example.org/m:t", skip=frozenset({BASE["digest"]}))
    data = b"".join(tar_chunks(entries))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        member = tar.extractfile("blobs/sha256/" + blob.digest[7:])
        assert member is not None
        assert "sha256:" + hashlib.sha256(member.read()).hexdigest() == blob.digest
        index_json = tar.extractfile("index.json")
        assert index_json is not None
        [named] = json.loads(index_json.read())["manifests"]
    assert names.count("blobs/sha256/" + blob.digest[7:]) == 1 and streamed == len(b"weights")
    assert named["annotations"]["io.containerd.image.name"] == "example.org/m:t"
    entries, streamed = layout.archive(top, None, skip=frozenset({blob.digest, BASE["digest"]}))
    assert streamed == 0
    # a collection keeps what the image reaches and drops the rest
    stray = layout.put_json({"stray": True}, "application/json")
    layout.collect([top])
    assert not layout.blob_path(stray["digest"]).exists()
    assert layout.blob_path(top["digest"]).exists()


def test_the_engine_s_image_record_names_the_stored_layers_without_their_bytes() -> None:
    """layers_image_archive: the layers were written into containerd's content store on
    their own; the archive carries only a config, manifest and index.json naming them."""
    blobs = [Blob("sha256:" + "a" * 64, 1024), Blob("sha256:" + "b" * 64, 2048)]
    data = b"".join(tar_chunks(layers_image_archive(blobs, "example:tmp", "linux/arm64/v8")))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None
            return member.read()

        assert not any(blob.digest[7:] in " ".join(names) for blob in blobs)  # no layer bytes
        assert names[-1] == "index.json"
        [top] = json.loads(read("index.json"))["manifests"]
        assert top["annotations"]["io.containerd.image.name"] == "example:tmp"
        manifest_bytes = read("blobs/sha256/" + top["digest"][7:])
        assert hashlib.sha256(manifest_bytes).hexdigest() == top["digest"][7:]
        manifest = json.loads(manifest_bytes)
        assert [(x["digest"], x["size"]) for x in manifest["layers"]] == [
            (b.digest, b.size) for b in blobs
        ]
        config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"][7:]))
        assert config["rootfs"]["diff_ids"] == [b.digest for b in blobs]
        assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")


def test_the_layers_put_the_files_where_the_runtime_reads_them() -> None:
    from omibuild.planning.plan import MODELS

    assert f"/{MODEL_ROOT}" == MODELS == "/models"
