"""Image assembly after BuildKit: the model layers omibuild makes from the staged files
(beside the build), appended to the image BuildKit wrote as a layout; then loaded into the
engine (only the blobs it lacks), the example predicted there, and pushed or written as an
OCI file. A failure is one line with its kind; nothing is tagged here."""

from __future__ import annotations

import contextlib
import sys
import tarfile
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omibuild.engine.attest import Inputs, Statement, attach, model_sums
from omibuild.engine.containerd import ContentError
from omibuild.engine.exports import ExportError, add_exports
from omibuild.engine.failures import LOGIN_HINT, LOST_SNAPSHOT, REGISTRY_HINT, Failure
from omibuild.engine.images import HOST_PLATFORM, containerd_name
from omibuild.engine.jobs import ApplyOptions, Job
from omibuild.engine.modelsig import HINT as MODEL_SIGNING_HINT
from omibuild.engine.modelsig import SIGNATURE, ModelSigningError, sign_model
from omibuild.engine.oci import (
    Appended,
    Layout,
    LayoutError,
    file_layer,
    layers_image_archive,
    outputs_layer,
    reset,
)
from omibuild.engine.progress import view_kind
from omibuild.engine.registry import Client, RegistryError, split_reference
from omibuild.engine.registry import push as push_image
from omibuild.engine.request import BuildResult, Executor
from omibuild.engine.signing import COSIGN_HINT, CosignMissing, SigningError, sign
from omibuild.engine.steps import OwnSteps
from omibuild.planning.plan import Plan
from omibuild.render.dockerfile import CTX_MODEL
from omibuild.store.answers import known_answer, remember_answer
from omibuild.store.cache import Cache
from omibuild.store.hashing import sha256_file
from omibuild.store.layers import (
    Blob,
    LayerFileChanged,
    StagedLayer,
    known_blob,
    layer_blob,
    pushed_to,
    remember_blob,
    remember_sha1s,
    tar_chunks,
)
from omibuild.units import human


@dataclass(frozen=True)
class Ingester:
    """Where new model layers go into the engine's content store while they are hashed,
    beside the build (``ingester``): the engine, and the name they wait under there."""

    executor: Executor
    name: str
    platform: str


@dataclass(frozen=True)
class MadeLayers:
    """The model layers made beside the build: the layers, the model bytes read to learn
    digests not seen before, those of them already in the engine's content store, and the
    seconds it took."""

    appended: list[Appended]
    read: int
    ingested: int
    seconds: float


Made = futures.Future[MadeLayers]


def ingester(executor: Executor, job: Job) -> Ingester | None:
    """Where the model layers can go into the engine as they are hashed: an image the engine
    will hold (loaded, or for the dry prediction), of one platform, the host's, and
    containerd reachable (``Executor.importer``, ``Executor.content_store``). The store runs
    beside the build's own steps, in the pass that reads the files: a 1 GiB model-only
    rebuild into the engine measured 6.6 s where `docker load` of the same bytes took 8.4."""
    plan = job.plan
    if not (job.output == "load" or plan.dry_run) or len(plan.platforms) > 1:
        return None
    where = plan.platforms[0] if plan.platforms else HOST_PLATFORM
    if where != HOST_PLATFORM or not executor.importer():
        return None
    return Ingester(executor, containerd_name(job.model_temp), where)


def model_layers(
    ctx: Path,
    plan: Plan,
    cache: Cache,
    *,
    upload: bool = False,
    ingest: Ingester | None = None,
) -> MadeLayers:
    """The plan's model layers as omibuild makes them from the staged files. Runs beside the
    build. A layer not seen before is read once, which also checks every file of it against
    the plan (hashing it, unless this process just read it whole: store/hashing.py READ_HERE;
    the cache's stat memo or omi.lock offline is only a hint taken to skip reads); with
    ``upload`` (a push), that same pass uploads it to the first target repository, its
    digest closing the upload (and each file's SHA1, for the SBOM); with ``ingest``, it
    writes them into the engine's content store (``_store_in_engine``), which names each by
    the digest it computes. A layer seen before is only named: a push uploads it later if
    the repository lacks it, a load sends it if the engine lacks it."""
    appended, read, ingested = [], 0, 0
    started = time.perf_counter()
    client = Client(*split_reference(plan.image_refs[0])[:2]) if upload else None
    layers = [StagedLayer(group.files, ctx / CTX_MODEL) for group in plan.model_layers]
    new = [layer for layer in layers if known_blob(cache, layer) is None] if ingest else []
    if ingest is not None and new and _store_in_engine(ingest, new, cache):
        ingested = read = sum(layer.model_bytes for layer in new)
    # else the load sends them, as it does where containerd is not reachable
    for index, (group, layer) in enumerate(zip(plan.model_layers, layers, strict=True)):
        if client is None:
            blob, was_read = layer_blob(cache, layer)
        elif (known := known_blob(cache, layer)) is not None:
            blob, was_read = known, False
        else:
            sha1s: dict[str, str] = {}  # for the SBOM, read once with the upload
            digest = client.upload_hashing(layer.size, layer.chunks(sha1s=sha1s))
            blob, was_read = remember_blob(cache, layer, digest), True
            remember_sha1s(cache, layer, sha1s)
        read += layer.model_bytes if was_read else 0
        what = f"{len(group.files)} file{'s' * (len(group.files) != 1)}"
        created = f"omibuild: model layer {index + 1}/{len(layers)} ({what}, {human(group.size)})"
        appended.append(Appended(blob, created, layer=layer))
    return MadeLayers(appended, read, ingested, time.perf_counter() - started)


def _store_in_engine(ingest: Ingester, layers: list[StagedLayer], cache: Cache) -> bool:
    """Write ``layers`` into the engine's content store as they are read (their files
    checked against the plan as they pass; containerd computes each digest), under a lease,
    then have containerd's import record an image naming them (``Ingester.name``), which
    keeps them until the load. False where containerd refused: the load sends them then."""
    store = ingest.executor.content_store()
    if store is None:
        return False
    try:
        with store, store.lease() as lease:
            blobs = [Blob(store.write(layer.chunks(), layer.size, lease), layer.size)
                     for layer in layers]  # fmt: skip
            archive = layers_image_archive(blobs, ingest.name, ingest.platform)
            if ingest.executor.ingest(tar_chunks(archive)) is not None:
                return False
    except ContentError:
        return False
    for layer, blob in zip(layers, blobs, strict=True):
        remember_blob(cache, layer, blob.digest)
    return True


class _Failed(Exception):
    """An assembly step failed: ``failure`` says why (raised inside this module only)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _changed(err: LayerFileChanged, cache: Cache) -> _Failed:
    cache.forget_hashes()  # the memo vouched for bytes it had not seen
    return _Failed(Failure("model files changed", str(err)))


def _registry_failure(err: RegistryError) -> _Failed:
    """A push omibuild made itself that failed, said as a failed BuildKit push is."""
    if err.status in (401, 403):
        return _Failed(Failure("auth", f"the registry refused the push: {err}", LOGIN_HINT))
    if err.status == 0:
        return _Failed(Failure("registry", str(err), REGISTRY_HINT))
    return _Failed(Failure("push", f"the push failed: {err}"))


@dataclass
class _Assembly:
    """One image being assembled: the job, the engine, and where its layout is."""

    job: Job
    executor: Executor
    cache: Cache
    steps: OwnSteps
    layout: Layout
    annotations: dict[str, str]
    statements: list[Statement] = field(default_factory=list)  # attest.py's, for signing
    made_exports: dict[str, str] = field(default_factory=dict)  # kind: manifest digest

    @property
    def plan(self) -> Plan:
        return self.job.plan

    def model(self, made: Made, uploading: bool) -> list[Appended]:
        """The model layers made beside the build (hashed, or uploaded while hashed)."""
        try:
            layers = made.result()
        except LayerFileChanged as err:
            raise _changed(err, self.cache) from None
        except RegistryError as err:
            raise _registry_failure(err) from None
        model, read = layers.appended, layers.read
        self.job.result.model_bytes_read = read
        size = human(sum(a.layer.model_bytes for a in model if a.layer))
        if uploading:
            self.job.result.model_bytes_sent = read
        self.job.result.model_bytes_sent += layers.ingested
        if layers.ingested:
            what = f"storing the model layers in the engine as they are hashed ({size})"
        else:
            what = f"{'uploading' if uploading else 'hashing'} the model layers ({size})"
        self.steps.report(what, layers.seconds if read else None)
        return model

    def load(self, top: dict[str, Any], have: frozenset[str]) -> tuple[int, float]:
        """Load the image into the engine under the temporary tag, less the blobs ``have``:
        (model bytes sent, seconds)."""
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n

        started = time.perf_counter()
        stored = self.executor.content_blobs()  # what containerd has, whatever names it
        for attempt in (1, 2):
            sent = 0
            skip = have | stored if attempt == 1 else have
            entries, _ = self.layout.archive(
                top, containerd_name(self.job.temp), skip=skip, on_bytes=count
            )
            try:
                error = self.executor.load(tar_chunks(entries), max(1, len(self.plan.platforms)))
            except LayerFileChanged as err:
                raise _changed(err, self.cache) from None
            # once more, sending what the store had (its collector may have taken it since),
            # or when the engine lost a record of its own
            again = bool(stored - have) or LOST_SNAPSHOT.search(error or "")
            if error is None or attempt == 2 or not again:
                break
        if error is not None:
            if sent:  # the engine refused the layer: what vouched for its bytes goes too
                self.cache.forget_hashes()
            raise _Failed(Failure("load", error))
        return sent, time.perf_counter() - started

    def into_engine(self, top: dict[str, Any], blobs_here: bool) -> dict[str, Any]:
        if not self.plan.dry_run:
            top = self.layout.indexed(top, self.annotations)
        # what the engine has already (the blobs of the images now at the target's tags) is
        # left out of the load: a code-only rebuild sends no model bytes
        have = (
            frozenset(d for ref in self.plan.image_refs for d in self.executor.image_layers(ref))
            if blobs_here
            else frozenset()
        )
        sent, seconds = self.load(top, have)
        self.job.result.model_bytes_sent += sent
        what = f"{human(sent)} of model layers" if sent else "no model bytes: it has them"
        single = len(self.plan.platforms) <= 1
        via = "containerd's import" if single and self.executor.importer() else "docker load"
        self.steps.report(f"loading into the engine ({what}, by {via})", seconds)
        return top

    def dry_predict(
        self, top: dict[str, Any], known: bytes | None, in_engine: bool
    ) -> dict[str, Any]:
        """Predict the example in the loaded image; its answer becomes one more layer. An
        answer ``known`` for these very bytes is used as it is: the image is not started."""
        started = time.perf_counter()
        seconds: float | None = None
        if known is None:
            outputs, said = self.executor.describe(self.job.temp)
            lines = tuple(ln for ln in said.splitlines() if ln.strip())
            if outputs is None:
                self.steps.log(("predicting the example input", *lines, "ERROR"))
                last = reason_line(lines) or "the dry prediction failed"
                raise _Failed(Failure("example", last.removeprefix("omibuild: ")[:400]))
            remember_answer(self.cache, str(top["digest"]), outputs)
            seconds = time.perf_counter() - started
        else:
            outputs, lines = known, ("the same image answered before: not started again",)
        loaded = frozenset(d for d, _ in self.layout.blobs(top))
        top = self.layout.indexed(
            self.layout.append(top, [outputs_layer(outputs)]), self.annotations
        )
        if in_engine:
            self.load(top, loaded)
        self.steps.report("predicting the example input", seconds, lines)
        return top

    def attest(self, top: dict[str, Any], model: list[Appended]) -> dict[str, Any]:
        """Provenance and SBOM statements naming each final image manifest (attest.py)."""
        started = time.perf_counter()
        manifest = self.job.target.manifest_file
        try:
            inputs = Inputs(
                self.plan, manifest.name, sha256_file(manifest), model_sums(self.cache, model)
            )
            top, self.statements = attach(self.layout, top, inputs)
        except LayerFileChanged as err:
            raise _changed(err, self.cache) from None
        except (OSError, LayoutError, ValueError, KeyError, tarfile.TarError) as err:
            raise _Failed(Failure("attest", f"cannot attest the image: {err}")) from None
        self.steps.report("attesting: SLSA provenance v1, SPDX SBOM", time.perf_counter() - started)
        return top

    def docker(self, top: dict[str, Any], asked: bool) -> dict[str, Any]:
        """One Docker v2 manifest for the image (image.format docker): no index to hold
        attestations, which are then left out, and the step says so."""
        try:
            top = self.layout.docker_manifest(top)
        except (LayoutError, KeyError, OSError, ValueError) as err:
            raise _Failed(Failure("image", f"cannot write a docker-format image: {err}")) from None
        left = ": the SLSA provenance and SBOM are left out (no index holds them)" if asked else ""
        self.steps.report(f"one Docker v2 manifest, no index{left}", None)
        return top

    def exports(self, top: dict[str, Any], model: list[Appended]) -> dict[str, Any]:
        """ModelPack and modelcar manifests over the same model layers (exports.py), in the
        index; tagged beside the image at a push. The engine holds only the OMI image."""
        if self.job.output == "load":
            self.steps.report("exports: written at a push or to an OCI file, not loaded", None)
            return top
        try:
            top, made = add_exports(self.layout, top, self.plan, model)
        except (ExportError, LayoutError, KeyError, OSError, ValueError) as err:
            raise _Failed(Failure("image", f"cannot export: {err}")) from None
        self.made_exports = made
        if self.job.output == "push":
            self.job.result.exports = {k: list(self.plan.export_refs(k)) for k in made}
        self.steps.report(f"adding {' and '.join(made)} beside the image (no model byte)", None)
        return top

    def model_signature(self, key: Path, model: list[Appended]) -> Appended:
        """The staged model files signed (modelsig.py), as a one-file layer beside them."""
        started = time.perf_counter()
        root = next(a.layer.root for a in model if a.layer is not None)
        try:
            bundle = sign_model(key, root)
        except ModelSigningError as err:
            raise _Failed(Failure("sign", str(err), MODEL_SIGNING_HINT)) from None
        self.steps.report(f"signing the model ({SIGNATURE})", time.perf_counter() - started)
        return file_layer(SIGNATURE, bundle, "the model's signature (model-signing)")

    def sign(self, key: Path, digest: str) -> None:
        """cosign signs what was pushed, and attaches each statement signed (signing.py)."""
        started = time.perf_counter()
        try:
            sign(key, self.plan.repository, digest, self.statements)
        except CosignMissing as err:
            raise _Failed(Failure("sign", f"cosign: {err}", COSIGN_HINT)) from None
        except SigningError as err:
            raise _Failed(Failure("sign", f"cosign: {err}")) from None
        what = f" and {len(self.statements)} signed statements" if self.statements else ""
        self.steps.report(f"signing with cosign (the image{what})", time.perf_counter() - started)

    def write_oci(self, top: dict[str, Any], dest: str) -> None:
        started = time.perf_counter()
        try:
            self.layout.write_tarball(top, Path(dest), self.plan.image_refs[0])
        except LayerFileChanged as err:
            raise _Failed(Failure("model files changed", str(err))) from None
        except OSError as err:
            raise _Failed(Failure("write", f"cannot write {dest}: {err.strerror or err}")) from None
        self.steps.report(f"writing {dest}", time.perf_counter() - started)

    def push(self, top: dict[str, Any], model: list[Appended]) -> None:
        started = time.perf_counter()
        cache, refs = self.cache, self.plan.image_refs
        mounts = {a.blob.digest: list(pushed_to(cache, a.layer)) for a in model if a.layer}
        try:
            also = {
                ref: digest
                for kind, digest in self.made_exports.items()
                for ref in self.plan.export_refs(kind)
            }
            pushed = push_image(refs, *self.layout.push_parts(top), mount_from=mounts, also=also)
        except RegistryError as err:
            raise _registry_failure(err) from None
        except LayerFileChanged as err:
            raise _changed(err, cache) from None
        self.job.result.model_bytes_sent += sum(
            a.layer.model_bytes for a in model if a.layer and a.blob.digest in pushed.uploaded
        )
        where = {f"{h}/{r}" for h, r, _ in map(split_reference, refs)}
        for a in model:  # where the next push of this layer to another repository can mount it
            if a.layer is not None:
                kept = tuple(w for w in pushed_to(cache, a.layer) if w not in where)
                remember_blob(cache, a.layer, a.blob.digest, (*kept, *sorted(where)))
        moved = f"{human(pushed.uploaded_bytes)} uploaded, {pushed.present} blobs already there"
        if pushed.mounted:
            moved += f", {pushed.mounted} mounted from another repository"
        self.steps.report(f"pushing to the registry ({moved})", time.perf_counter() - started)


def finish(
    job: Job,
    result: BuildResult,
    made: Made,
    executor: Executor,
    cache: Cache,
    options: ApplyOptions,
    blobs_here: bool,
) -> None:
    """BuildKit built everything but the model: append the model layers, load the image into
    the engine (only the blobs it lacks), run the dry prediction, then push or write the OCI
    file. A failure sets ``result`` (nothing is tagged)."""
    assert job.layout is not None
    plan = job.plan
    engine = job.output == "load" or plan.dry_run  # the dry prediction runs in the engine
    docker = plan.image_format == "docker" and job.output != "load"
    attesting = options.attest and job.output != "load" and not docker
    signing = options.sign is not None and job.output == "push"
    total = 1 + engine + plan.dry_run + (job.output != "load") + attesting + docker + signing
    total += (options.sign_model is not None) + bool(plan.exports and not docker)
    steps = OwnSteps(view_kind(options.progress, sys.stderr), sys.stderr, total, result.log_path)
    annotations = dict(plan.annotations)
    build = _Assembly(job, executor, cache, steps, Layout(job.layout), annotations)
    try:
        model = build.model(made, uploading=job.output == "push" and not engine)
        if options.sign_model is not None:
            model = [*model, build.model_signature(options.sign_model, model)]
        try:
            rest = build.layout.top()
            top = build.layout.append(rest, model)
        except (LayoutError, OSError, ValueError, KeyError) as err:
            reset(job.layout)  # a cache: the next build fills it again
            line = f"the image BuildKit wrote is unusable ({err}); run again"
            raise _Failed(Failure("image", line)) from None
        known = known_answer(cache, str(top["digest"])) if plan.dry_run else None
        in_engine = engine and (job.output == "load" or known is None)
        if in_engine:
            top = build.into_engine(top, blobs_here)
        elif engine:  # only the dry prediction needed the engine, and its answer is known
            steps.report("loading into the engine: not needed, its answer is known", None)
        if plan.dry_run:
            top = build.dry_predict(top, known, in_engine)
        top = build.layout.indexed(top, annotations)
        if attesting:
            top = build.attest(top, model)
        elif docker:
            top = build.docker(top, options.attest)
        if plan.exports and not docker:
            top = build.exports(top, model)
        result.digest = str(top["digest"])
        with contextlib.suppress(LayoutError, KeyError, OSError, ValueError):
            job.result.venv_bytes = build.layout.step_bytes(top, "/opt/omi/venv")
            job.result.content_bytes = build.layout.content_bytes(top)
        if job.output.startswith("oci:"):
            build.write_oci(top, job.output[4:])
        elif job.output == "push":
            build.push(top, model)
            if options.sign is not None:
                build.sign(options.sign, str(top["digest"]))
    except _Failed as failed:
        result.ok, result.error = False, str(failed.failure)
        result.failure_kind = failed.failure.kind
        return
    build.layout.collect([rest])  # what the next build's export can reuse; nothing else


def reason_line(lines: tuple[str, ...]) -> str | None:
    """The line that says why: the last one, unless it is the docker CLI's closing hint
    ("Run 'docker run --help' for more information"), which would hide the daemon's reason
    on the line before it."""
    said = [ln for ln in lines if not (ln.strip().startswith(("Run 'docker", "See 'docker")))]
    return said[-1].strip() if said else None
