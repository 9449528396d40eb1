"""apply's decisions with a recording executor: no engine needed."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from omibuild.commands.apply import check_reviewed_plan, expand_targets, target_of
from omibuild.engine.apply import ApplyOptions, Target, apply_all
from omibuild.engine.request import BuildRequest, BuildResult, BuildSecret
from omibuild.errors import BuildError, UsageError
from omibuild.planning.pipeline import prepare
from omibuild.planning.plan import Plan
from omibuild.progress import QUIET
from omibuild.store.cache import Cache
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.usefixtures("example_models")  # reads examples/


class Recorder:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.built: list[BuildRequest] = []
        self.baked: list[list[BuildRequest]] = []
        self.tags: dict[str, dict[str, str]] = {}
        self.removed: list[str] = []
        self.contexts: list[set[str]] = []
        self.loaded: list[dict] = []  # type: ignore[type-arg]

    def _result(self, req: BuildRequest) -> BuildResult:
        self.contexts.append(
            {p.relative_to(req.context).as_posix() for p in req.context.rglob("*") if p.is_file()}
        )
        if self.ok:
            _write_layout(Path(req.output.removeprefix("layout:")), dict(req.annotations))
        return BuildResult(
            ok=self.ok,
            digest="sha256:" + "a" * 64 if self.ok else None,
            log_tail=["#9 ERROR: boom"],
            error=None if self.ok else "ERROR: boom",
        )

    def build(self, request: BuildRequest) -> BuildResult:
        self.built.append(request)
        return self._result(request)

    def bake(self, requests: list[BuildRequest]) -> list[BuildResult]:
        self.baked.append(requests)
        return [self._result(r) for r in requests]

    def image_labels(self, ref: str) -> dict[str, str] | None:
        return self.tags.get(ref)

    def remote_labels(self, ref: str) -> dict[str, str] | None:
        return None

    def remote_annotations(self, ref: str) -> dict[str, str] | None:
        return self.tags.get(ref)

    def image_digest(self, ref: str) -> str | None:
        return None

    def tag(self, source: str, target: str) -> None:
        self.tags[target] = self.tags[source]

    def remove_tag(self, ref: str) -> None:
        self.removed.append(ref)
        self.tags.pop(ref, None)

    def image_layers(self, ref: str) -> list[str]:
        return []

    def image_platforms(self, ref: str) -> tuple[str, ...] | None:
        return None

    def keeps_blobs(self) -> bool:
        return True

    def importer(self) -> list[str] | None:
        return None

    def content_blobs(self) -> frozenset[str]:
        return frozenset()

    def content_store(self) -> None:
        return None

    def ingest(self, chunks: Iterator[bytes]) -> str | None:
        return "containerd's import is not reachable"

    def load(self, chunks: Iterator[bytes], platforms: int = 1) -> str | None:
        """Read the OCI archive as an engine would: the name, and the config's labels."""
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:

            def read(name: str) -> dict:  # type: ignore[type-arg]
                member = tar.extractfile(name)
                assert member is not None
                return json.loads(member.read())  # type: ignore[no-any-return]

            [top] = read("index.json")["manifests"]
            manifest = read("blobs/sha256/" + top["digest"][7:])
            if "manifests" in manifest:  # an index of one platform's manifest
                assert manifest["annotations"]["io.omibuild.plan.digest"]
                manifest = read("blobs/sha256/" + manifest["manifests"][0]["digest"][7:])
            config = read("blobs/sha256/" + manifest["config"]["digest"][7:])
        name = top["annotations"]["io.containerd.image.name"]
        self.tags[name] = config["config"]["Labels"]
        self.loaded.append(manifest)
        return None

    def describe(self, image: str) -> tuple[bytes | None, str]:
        return b'{"outputs": []}\n', "omibuild: the model answers its example with nothing"


def _put(layout: Path, data: bytes, media_type: str) -> dict:  # type: ignore[type-arg]
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _write_layout(layout: Path, labels: dict[str, str]) -> None:
    """What BuildKit's OCI exporter writes, in little: a config, a manifest, index.json."""
    config = _put(
        layout,
        json.dumps(
            {"config": {"Labels": labels}, "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = _put(
        layout,
        json.dumps({"schemaVersion": 2, "config": config, "layers": []}).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(
        EXAMPLES / "custom-hooks", tmp_path / "r", ignore=shutil.ignore_patterns("omi.lock")
    )
    return tmp_path / "r" / "omi.yaml"


def _prepare(manifest: Path, cache: Cache) -> Target:
    return target_of(prepare(manifest, cache, QUIET))


def test_builds_tags_on_success_and_then_is_up_to_date(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("# a CA bundle\n")
    monkeypatch.setenv("PIP_CERT", str(ca))
    cache, rec = Cache(tmp_path / "c"), Recorder()
    p = _prepare(repo, cache)
    [result] = apply_all([p], rec, cache, QUIET, ApplyOptions())
    assert result.status == "built" and len(rec.built) == 1
    req = rec.built[0]
    assert req.tags[0].split(":")[-1].startswith("omibuild-tmp-")  # built to a temporary tag
    assert set(p.plan.image_refs) <= set(rec.tags)  # then retagged
    assert req.tags[0] in rec.removed and req.tags[0] not in rec.tags
    assert {
        "Dockerfile",
        "omi.json",
        "requirements/model.txt",
        "code/hooks.py",
        "model/model.joblib",  # staged for omibuild's model layer, never sent to BuildKit
    } <= rec.contexts[0]
    assert "model" in (req.context / ".dockerignore").read_text().split()
    layers = rec.loaded[0]["layers"]
    assert [x["mediaType"] for x in layers] == ["application/vnd.oci.image.layer.v1.tar"]
    assert not any(s.endswith(".tmp") for s in rec.contexts[0])
    assert BuildSecret("ca", file=ca) in req.secrets  # the host CA bundle, as a secret file
    again = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    assert again[0].status == "up to date" and len(rec.built) == 1


def test_the_same_image_built_again_is_not_started_again_for_its_answer(
    repo: Path, tmp_path: Path
) -> None:
    """The dry prediction's answer is kept by the image's bytes (store/answers.py): built
    again after it left the engine, the same image is loaded but not started; a changed
    model's image is started again."""

    class Counts(Recorder):
        asked = 0

        def describe(self, image: str) -> tuple[bytes | None, str]:
            self.asked += 1
            return super().describe(image)

    cache, rec = Cache(tmp_path / "c"), Counts()
    target = _prepare(repo, cache)
    assert target.plan.dry_run
    [first] = apply_all([target], rec, cache, QUIET, ApplyOptions())
    for ref in target.plan.image_refs:  # removed from the engine
        rec.tags.pop(ref)
    [again] = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    assert (first.status, again.status, rec.asked) == ("built", "built", 1)
    assert first.digest == again.digest and len(rec.loaded) == 4  # each time, and the answer
    (repo.parent / "model" / "notes.txt").write_text("retrained\n")
    [changed] = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    assert changed.status == "built" and changed.digest != first.digest and rec.asked == 2


def test_a_failed_build_leaves_no_tag(repo: Path, tmp_path: Path) -> None:
    cache, rec = Cache(tmp_path / "c"), Recorder(ok=False)
    [result] = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    assert result.status == "failed" and "boom" in (result.error or "")
    assert rec.tags == {} and rec.removed
    assert not any((tmp_path / "c" / "contexts").glob("*.new-*"))


def test_a_failed_cache_export_builds_again_without_it(repo: Path, tmp_path: Path) -> None:
    class ExportFails(Recorder):
        def build(self, request: BuildRequest) -> BuildResult:
            if request.cache_to:  # the image is made, then exporting its cache fails
                self.built.append(request)
                return BuildResult(
                    ok=False,
                    log_tail=["#20 exporting cache to client directory", "#20 DONE 0.1s"],
                    error="ERROR: failed to solve: not found",
                )
            return super().build(request)

    cache, rec = Cache(tmp_path / "c"), ExportFails()
    p = _prepare(repo, cache)
    asked = ApplyOptions(cache_to=f"type=local,dest={tmp_path / 'exported'}")
    [result] = apply_all([p], rec, cache, QUIET, asked)
    assert result.status == "built"
    assert [bool(r.cache_to) for r in rec.built] == [True, False]
    assert rec.built[1].cache_from == rec.built[0].cache_from
    assert set(p.plan.image_refs) <= set(rec.tags)
    # any other failure is not retried
    cache, plain = Cache(tmp_path / "d"), Recorder(ok=False)
    apply_all([_prepare(repo, cache)], plain, cache, QUIET, ApplyOptions())
    assert len(plain.built) == 1


def test_a_lost_engine_record_builds_again_once(repo: Path, tmp_path: Path) -> None:
    class LosesOnce(Recorder):
        def build(self, request: BuildRequest) -> BuildResult:
            self.built.append(request)
            if len(self.built) == 1:  # no cache export in play: the image export lost a record
                return BuildResult(
                    ok=False,
                    log_tail=["#20 unpacking to example:omibuild-tmp done", "#20 DONE 5.2s"],
                    error="ERROR: failed to solve: not found",
                )
            return self._result(request)

    cache, rec = Cache(tmp_path / "c"), LosesOnce()
    p = _prepare(repo, cache)
    [result] = apply_all([p], rec, cache, QUIET, ApplyOptions(no_cache=True))
    assert result.status == "built" and len(rec.built) == 2
    assert rec.built[1] == rec.built[0] and set(p.plan.image_refs) <= set(rec.tags)

    class AlwaysLoses(LosesOnce):
        def build(self, request: BuildRequest) -> BuildResult:
            self.built.append(request)
            return BuildResult(ok=False, log_tail=[], error="ERROR: failed to solve: not found")

    cache, always = Cache(tmp_path / "d"), AlwaysLoses()
    [result] = apply_all([_prepare(repo, cache)], always, cache, QUIET, ApplyOptions())
    assert result.status == "failed" and len(always.built) == 2  # once more, not forever

    class SolverRace(LosesOnce):  # moby/buildkit#2303, once
        def build(self, request: BuildRequest) -> BuildResult:
            self.built.append(request)
            if len(self.built) == 1:
                error = "ERROR: failed to solve: failed to get edge: inconsistent graph state"
                return BuildResult(ok=False, log_tail=[], error=error)
            return self._result(request)

    cache, race = Cache(tmp_path / "r"), SolverRace()
    [result] = apply_all([_prepare(repo, cache)], race, cache, QUIET, ApplyOptions())
    assert result.status == "built" and len(race.built) == 2

    class MissingFile(LosesOnce):
        def build(self, request: BuildRequest) -> BuildResult:
            self.built.append(request)
            error = 'ERROR: failed to solve: failed to compute cache key: "/model/x": not found'
            return BuildResult(ok=False, log_tail=[], error=error)

    cache, missing = Cache(tmp_path / "e"), MissingFile()
    [result] = apply_all([_prepare(repo, cache)], missing, cache, QUIET, ApplyOptions())
    assert result.status == "failed" and len(missing.built) == 1  # the build's own error


def test_several_manifests_are_one_bake(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "o"
    shutil.copytree(EXAMPLES / "sklearn-iris", other, ignore=shutil.ignore_patterns("omi.lock"))
    cache, rec = Cache(tmp_path / "c"), Recorder()
    prepared = [_prepare(repo, cache), _prepare(other / "omi.yaml", cache)]
    results = apply_all(prepared, rec, cache, QUIET, ApplyOptions())
    assert [r.status for r in results] == ["built", "built"]
    assert len(rec.baked) == 1 and len(rec.baked[0]) == 2 and not rec.built


def test_push_needs_a_repository(tmp_path: Path) -> None:
    shutil.copytree(
        EXAMPLES / "sklearn-iris", tmp_path / "r", ignore=shutil.ignore_patterns("omi.lock")
    )
    manifest = tmp_path / "r" / "omi.yaml"
    lines = [
        ln for ln in manifest.read_text().splitlines() if "repository:" not in ln and ln != "image:"
    ]
    manifest.write_text("\n".join(lines) + "\n")
    cache = Cache(tmp_path / "c")
    with pytest.raises(UsageError, match=r"needs image\.repository"):
        apply_all(
            [_prepare(manifest, cache)], Recorder(), cache, QUIET, ApplyOptions(output="push")
        )


def test_no_cache_is_exported_unless_asked_and_a_named_one_is_this_machine_s_directory(
    repo: Path, tmp_path: Path
) -> None:
    cache, rec = Cache(tmp_path / "c"), Recorder()
    apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    assert rec.built[0].cache_to == rec.built[0].cache_from == ()  # the engine's own cache
    cache, rec = Cache(tmp_path / "c"), Recorder()
    asked = ApplyOptions(cache_to="type=local,dest=local:iris-custom,mode=max")
    apply_all([_prepare(repo, cache)], rec, cache, QUIET, asked)
    [export] = [c.exporting() for c in rec.built[0].cache_to]
    assert f"dest={tmp_path / 'c' / 'buildkit' / 'iris-custom'}" in export and "mode=max" in export
    assert rec.built[0].cache_from == ()  # nothing exported yet to import


def test_stale_plan_reasons(repo: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    reviewed = _prepare(repo, cache).plan
    check_reviewed_plan(reviewed, _prepare(repo, cache).plan)  # unchanged: accepted
    (repo.parent / "src" / "hooks.py").write_text(
        "def preprocess(x):\n    return x\ndef postprocess(x):\n    return x\n"
    )
    with pytest.raises(BuildError, match="the code changed"):
        check_reviewed_plan(reviewed, _prepare(repo, cache).plan)


def test_directories_expand_to_their_manifests() -> None:
    found = expand_targets([str(EXAMPLES)])
    assert len(found) >= 6 and all(p.name == "omi.yaml" for p in found)
    with pytest.raises(UsageError):
        expand_targets([str(EXAMPLES / "custom-hooks" / "src")])


def test_secret_values_travel_in_memory_and_files_by_path(tmp_path: Path) -> None:
    from omibuild.engine.secrets import build_secrets
    from omibuild.manifest.model import Secret

    key = tmp_path / "key.pem"
    key.write_text("k")
    env = {"HF_TOKEN": "hf_secret", "PIP_INDEX_URL": "https://u:pw@pypi.example/simple"}
    found = {
        s.id: s
        for s in build_secrets((Secret("hf", env="HF_TOKEN"), Secret("key", file=str(key))), env)
    }
    assert found["hf"].value == "hf_secret" and found["hf"].file is None
    assert found["hf"].spec == f"id=hf,env={found['hf'].env_name}"
    assert "pw@" in (found["pipconf"].value or "") and found["pipconf"].file is None
    assert found["key"].spec == f"id=key,src={key}"
    assert "hf_secret" not in repr(found["hf"])  # never printed by accident
    assert BuildSecret("a-b").env_name != BuildSecret("a_b").env_name


SNAPSHOT_LOST = (
    'failed to unpack loaded image: failed to prepare extraction snapshot "extract-1-a sha256:'
    + "b" * 64
    + '": parent snapshot sha256:'
    + "c" * 64
    + " does not exist: not found"
)


def test_a_snapshot_lost_during_a_load_loads_again_once(repo: Path, tmp_path: Path) -> None:
    """containerd's collector can remove a snapshot an unpack builds on (containerd#3787):
    the same load again succeeds; any other refusal, or a second loss, is the error."""

    class Loses(Recorder):
        def __init__(self, failures: list[str]) -> None:
            super().__init__()
            self.failures, self.calls = failures, 0

        def load(self, chunks: Iterator[bytes], platforms: int = 1) -> str | None:
            self.calls += 1
            if self.failures:
                b"".join(chunks)
                return self.failures.pop(0)
            return super().load(chunks)

    once = Loses([SNAPSHOT_LOST])
    cache = Cache(tmp_path / "c")
    [result] = apply_all([_prepare(repo, cache)], once, cache, QUIET, ApplyOptions())
    assert result.status == "built" and once.calls == len(once.loaded) + 1, result.error
    twice = Loses([SNAPSHOT_LOST, SNAPSHOT_LOST])
    cache = Cache(tmp_path / "d")
    [result] = apply_all([_prepare(repo, cache)], twice, cache, QUIET, ApplyOptions())
    assert result.status == "failed" and twice.calls == 2 and "parent snapshot" in result.error
    other = Loses(["no space left on device"])
    cache = Cache(tmp_path / "e")
    [result] = apply_all([_prepare(repo, cache)], other, cache, QUIET, ApplyOptions())
    assert result.status == "failed" and other.calls == 1


def test_blobs_containerd_still_holds_are_not_sent_and_a_refusal_sends_them(
    repo: Path, tmp_path: Path
) -> None:
    """A rebuild after the image left the engine (the engine's content store still holds its
    layers, BuildKit's cache keeping them) sends none of them; if the import then refuses
    (the store's collector took one since it was listed), the load runs again with them."""

    class Stored(Recorder):
        store: frozenset[str] = frozenset()
        refuse = False
        archives: list[set[str]] = []

        def content_blobs(self) -> frozenset[str]:
            return self.store

        def load(self, chunks: Iterator[bytes], platforms: int = 1) -> str | None:
            data = b"".join(chunks)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                self.archives.append({n[len("blobs/sha256/") :] for n in tar.getnames()})
            if self.refuse and len(self.archives) == 1:  # the first load of the apply
                return "ctr: content digest sha256:... not found"
            return super().load(iter((data,)), platforms)

    cache, rec = Cache(tmp_path / "c"), Stored()
    [first] = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
    layer = rec.loaded[-1]["layers"][0]["digest"]
    assert first.model_bytes_sent > 0 and layer[7:] in rec.archives[0]
    for trial, refuse in enumerate((False, True)):
        for ref in _prepare(repo, cache).plan.image_refs:  # the image left the engine
            rec.tags.pop(ref)
        rec.store, rec.refuse, rec.archives = frozenset({layer}), refuse, []
        [again] = apply_all([_prepare(repo, cache)], rec, cache, QUIET, ApplyOptions())
        assert again.status == "built", (trial, again.error)
        if refuse:  # refused without it, sent with it
            assert layer[7:] not in rec.archives[0] and layer[7:] in rec.archives[1]
            assert again.model_bytes_sent == first.model_bytes_sent
        else:
            assert all(layer[7:] not in names for names in rec.archives)
            assert again.model_bytes_sent == 0


def test_containerd_names_and_a_platform_the_base_lacks_is_refused() -> None:
    from omibuild.engine.apply import refuse_unoffered_platforms
    from omibuild.engine.images import containerd_name

    assert containerd_name("python:3.11") == "docker.io/library/python:3.11"
    assert containerd_name("team/m:1") == "docker.io/team/m:1"
    assert containerd_name("127.0.0.1:5000/a/b:t") == "127.0.0.1:5000/a/b:t"
    assert containerd_name("omibuild.local/python:3.11-slim") == "omibuild.local/python:3.11-slim"

    class Base(Recorder):
        def image_platforms(self, ref: str) -> tuple[str, ...] | None:
            return ("linux/amd64",) if ref.startswith("omibuild.local/") else None

    golden = Plan.from_dict(
        json.loads((Path(__file__).parents[1] / "golden" / "sklearn-iris.plan.json").read_text())
    )
    plan = dataclasses.replace(golden, base_image="omibuild.local/python:3.11-slim")
    two = dataclasses.replace(plan, platforms=("linux/amd64", "linux/arm64/v8"))
    with pytest.raises(UsageError) as err:
        refuse_unoffered_platforms(two, Base())
    assert "offers linux/amd64, not linux/arm64/v8" in str(err.value)
    refuse_unoffered_platforms(dataclasses.replace(plan, platforms=("linux/amd64",)), Base())
    unknown = dataclasses.replace(two, base_image="python:3.11-slim")  # not in the engine
    refuse_unoffered_platforms(unknown, Base())
