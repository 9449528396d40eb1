"""Apply one plan: skip if the image is up to date, stage the context, build through the
executor, append the model layers omibuild makes (engine/oci.py), and tag only on success
(no partial tags, no staging left behind)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from omibuild.contract import OUTPUTS_FILE, PLAN_DIGEST_LABEL, PLAN_STATE_LABEL
from omibuild.engine.context import context_dir, staged_context
from omibuild.engine.oci import Appended, Layout, LayoutError, reset
from omibuild.engine.progress import (
    LOGIN_HINT,
    REGISTRY_HINT,
    Failure,
    report_step,
    view_kind,
)
from omibuild.engine.registry import Client, RegistryError, split_reference
from omibuild.engine.registry import push as push_image
from omibuild.engine.request import BuildRequest, BuildResult, BuildSecret, Executor
from omibuild.engine.secrets import build_secrets
from omibuild.errors import Terminated, UsageError
from omibuild.manifest.model import Secret
from omibuild.planning.plan import OMI, CacheSpec, Plan
from omibuild.render.dockerfile import CTX_MODEL
from omibuild.sources.base import ResolvedSource
from omibuild.sources.cache import Cache
from omibuild.sources.layers import (
    Blob,
    Entry,
    Layer,
    LayerFileChanged,
    known_blob,
    layer_blob,
    pushed_to,
    remember_blob,
    tar_chunks,
)
from omibuild.sources.progress import Progress
from omibuild.sources.usage import human


@dataclass(frozen=True)
class ApplyOptions:
    output: str = "load"  # load | push | oci:PATH
    platforms: tuple[str, ...] = ()
    builder: str | None = None
    cache_to: str | None = None
    no_cache: bool = False
    offline: bool = False
    progress: str = "auto"
    sbom: bool = False


@dataclass(frozen=True)
class Target:
    """A plan to apply, with what staging its build context reads besides the plan: the
    resolved model files, the manifest's directory and code, and the build's secrets."""

    plan: Plan
    resolved: ResolvedSource
    manifest_file: Path
    manifest_root: Path
    code_path: str | None = None
    secrets: tuple[Secret, ...] = ()
    analysis: tuple[tuple[str, bytes], ...] = ()  # the plan's analysis_files, as bytes


@dataclass
class ApplyResult:
    name: str
    refs: tuple[str, ...]
    status: str  # built | up to date | failed
    seconds: float = 0.0
    digest: str | None = None
    downloaded_bytes: int = 0
    model_bytes_read: int = 0  # model bytes read to learn new layers' digests
    model_bytes_sent: int = 0  # model bytes streamed to the engine or into an OCI file
    cached_steps: int = 0
    total_steps: int = 0
    error: str | None = None
    venv_bytes: int | None = None  # the venv's layer, as built


def up_to_date(plan: Plan, executor: Executor, output: str) -> bool:
    """Does the target already carry this plan's digest (locally, or in the registry)?"""
    if output.startswith("oci:"):
        return False
    if output == "push":
        for ref in plan.image_refs:
            annotations = executor.remote_annotations(ref)
            if not annotations or annotations.get(PLAN_DIGEST_LABEL) != plan.digest:
                return False
        return True
    for ref in plan.image_refs:
        labels = executor.image_labels(ref)
        if not labels or labels.get(PLAN_DIGEST_LABEL) != plan.digest:
            return False
    return True


def _on_this_machine(spec: CacheSpec, cache: Cache) -> CacheSpec:
    """The plan's ``local:<name>`` placeholder as this machine's cache directory."""
    if spec.type != "local" or not spec.ref.startswith("local:"):
        return spec
    return replace(spec, ref=str(cache.root / "buildkit" / spec.ref.removeprefix("local:")))


def cache_refs(
    plan: Plan, options: ApplyOptions, cache: Cache
) -> tuple[tuple[CacheSpec, ...], tuple[CacheSpec, ...]]:
    """(caches to import, caches to export) for one build."""
    if options.no_cache or not plan.options.cache_enabled:
        return (), ()
    caches = (CacheSpec.parse(options.cache_to),) if options.cache_to else plan.options.caches
    here = [_on_this_machine(c, cache) for c in caches]
    # a local directory nothing was exported to yet: importing it would only warn
    imports = tuple(c for c in here if c.type != "local" or (Path(c.ref) / "index.json").is_file())
    # Model weights do not compress: an uncompressed cache (like the locally loaded image's
    # layers) costs 10.7 s per GiB to export, against 13.4 s for zstd and more for gzip.
    exports = tuple(c.with_extra(compression="uncompressed", ignore_error="true") for c in here)
    return imports, exports


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Tagging is a few quick calls: finish them before honouring Ctrl-C or SIGTERM, so the
    image has all of its tags or none of them."""
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            raise Terminated() if signal.SIGTERM in received else KeyboardInterrupt()


@dataclass
class _Job:
    target: Target
    plan: Plan
    output: str
    temp: str
    result: ApplyResult
    layout: Path | None = None


def _job(target: Target, executor: Executor, options: ApplyOptions) -> _Job:
    plan = target.plan
    if options.platforms:
        plan = replace(plan, platforms=options.platforms)
    output = "push" if options.output == "load" and plan.options.push else options.output
    if output == "push" and plan.repository.startswith("omibuild.local/"):
        raise UsageError(f"{plan.name}: pushing needs image.repository in omi.yaml")
    status = (
        "up to date" if not options.no_cache and up_to_date(plan, executor, output) else "pending"
    )
    temp = f"{plan.repository}:omibuild-tmp-{uuid.uuid4().hex[:12]}"
    return _Job(target, plan, output, temp, ApplyResult(plan.name, plan.image_refs, status))


def _request(
    job: _Job, ctx: Path, secrets: tuple[BuildSecret, ...], cache: Cache, options: ApplyOptions
) -> BuildRequest:
    plan = job.plan
    cache_from, cache_to = cache_refs(plan, options, cache)
    assert job.layout is not None
    return BuildRequest(
        context=ctx,
        dockerfile=ctx / "Dockerfile",
        tags=(job.temp,),
        # every label but the plan state, which the config holds: manifests stay small
        annotations=tuple(kv for kv in plan.labels if kv[0] != PLAN_STATE_LABEL),
        output=f"layout:{job.layout}",
        platforms=plan.platforms,
        cache_from=cache_from,
        cache_to=cache_to,
        no_cache=options.no_cache,
        secrets=secrets,
        host_network=plan.options.host_network,
        builder=options.builder or plan.options.builder,
        # pushed layers: gzip, which every registry and runtime reads; loaded ones: none, as
        # weights do not compress (measured: no slower than zstd, and blobs match the cache's)
        compression="gzip" if job.output == "push" else "uncompressed",
        sbom=options.sbom,
        source_date_epoch=plan.source_date_epoch,
        progress=options.progress,
    )


def model_layers(
    ctx: Path, plan: Plan, cache: Cache, *, upload: bool = False
) -> tuple[list[Appended], int, float]:
    """The plan's model layers as omibuild makes them from the staged files, the model bytes
    read to learn digests not seen before, and the seconds it took. Runs beside the build. A
    layer not seen before is read once, which also hashes every file of it against the plan
    (what vouched for them before, the cache's stat memo or omi.lock offline, is a hint taken
    to skip reads); with ``upload`` (a push), that same pass uploads it to the first target
    repository, its digest closing the upload. A layer seen before is only named: a push
    uploads it later if the repository lacks it."""
    appended, read = [], 0
    started = time.perf_counter()
    client = Client(*split_reference(plan.image_refs[0])[:2]) if upload else None
    count = len(plan.model_layers)
    for index, group in enumerate(plan.model_layers):
        layer = Layer(group.files, ctx / CTX_MODEL)
        if client is None:
            blob, was_read = layer_blob(cache, layer)
        elif (known := known_blob(cache, layer)) is not None:
            blob, was_read = known, False
        else:
            digest = client.upload_hashing(layer.size, layer.chunks())
            blob, was_read = remember_blob(cache, layer, digest), True
        read += layer.model_bytes if was_read else 0
        what = f"{len(group.files)} file{'s' * (len(group.files) != 1)}"
        created = f"omibuild: model layer {index + 1}/{count} ({what}, {human(group.size)})"
        appended.append(Appended(blob, created, layer=layer))
    return appended, read, time.perf_counter() - started


def _registry_error(err: RegistryError) -> str:
    """A push omibuild made itself that failed, said as a failed BuildKit push is."""
    if err.status in (401, 403):
        return str(Failure("auth", f"the registry refused the push: {err}", LOGIN_HINT))
    if err.status == 0:
        return str(Failure("registry", str(err), REGISTRY_HINT))
    return f"the push failed: {err}"


def _outputs_layer(outputs: bytes) -> Appended:
    """outputs.json, as the one-file layer appended after the dry prediction."""
    parts = f"{OMI}/{OUTPUTS_FILE}".strip("/").split("/")
    entries = [Entry("/".join(parts[:n]) + "/", directory=True) for n in range(1, len(parts))]
    entries.append(Entry("/".join(parts), len(outputs), data=outputs))
    data = b"".join(tar_chunks(entries))
    blob = Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    return Appended(blob, f"omibuild: {OUTPUTS_FILE} (the dry prediction's answer)", data=data)


def engine_name(ref: str) -> str:
    """A reference as the engine's image store names it (``docker.io/library/x:tag``)."""
    host, path, tag = split_reference(ref)
    return f"{'docker.io' if host == 'registry-1.docker.io' else host}/{path}:{tag}"


@dataclass
class _Steps:
    """omibuild's own steps after BuildKit's, numbered and shown as the build view shows
    BuildKit's (engine/progress.py); each also goes to the build's log."""

    kind: str
    stream: TextIO
    total: int
    log_path: str | None
    done: int = 0

    def report(self, what: str, seconds: float | None, logs: tuple[str, ...] = ()) -> None:
        self.done += 1
        name = f"[model {self.done}/{self.total}] {what}"
        report_step(self.kind, self.stream, name, seconds, logs)
        self.log((name, *logs, "CACHED" if seconds is None else f"DONE {seconds:.1f}s"))

    def log(self, lines: tuple[str, ...]) -> None:
        if self.log_path:
            with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
                log.write("".join(f"#model {ln}\n" for ln in lines))


def _finish(
    job: _Job,
    result: BuildResult,
    made: futures.Future[tuple[list[Appended], int, float]],
    executor: Executor,
    cache: Cache,
    options: ApplyOptions,
    blobs_here: bool,
) -> None:
    """BuildKit built everything but the model: append the model layers, load the image into
    the engine (only the blobs it lacks), run the dry prediction, then push or write the OCI
    file. A failure sets ``result`` (nothing is tagged)."""
    assert job.layout is not None
    plan, temp = job.plan, job.temp
    engine = job.output == "load" or plan.dry_run  # the dry prediction runs in the engine
    total = 1 + engine + plan.dry_run + (job.output != "load")
    uploading = job.output == "push" and not engine
    steps = _Steps(view_kind(options.progress, sys.stderr), sys.stderr, total, result.log_path)

    def fail(error: str) -> None:
        result.ok, result.error = False, error

    try:
        model, job.result.model_bytes_read, seconds = made.result()
    except LayerFileChanged as err:
        cache.forget_hashes()  # the memo vouched for bytes it had not seen
        return fail(str(err))
    except RegistryError as err:
        return fail(_registry_error(err))
    size = human(sum(a.layer.model_bytes for a in model if a.layer))
    if uploading:
        job.result.model_bytes_sent = job.result.model_bytes_read
    what = "uploading" if uploading else "hashing"
    steps.report(
        f"{what} the model layers ({size})", seconds if job.result.model_bytes_read else None
    )
    layout = Layout(job.layout)
    try:
        rest = layout.top()
        top = layout.append(rest, model)
    except (LayoutError, OSError, ValueError, KeyError) as err:
        reset(job.layout)  # a cache: the next build fills it again
        return fail(f"the image BuildKit wrote is unusable ({err}); run again")
    annotations = {k: v for k, v in plan.labels if k != PLAN_STATE_LABEL}
    if engine:
        if not plan.dry_run:
            top = layout.indexed(top, annotations)
        # what the engine has already (the blobs of the images now at the target's tags) is
        # left out of the load: a code-only rebuild sends no model bytes
        have = (
            frozenset(d for ref in plan.image_refs for d in executor.image_layers(ref))
            if blobs_here
            else frozenset()
        )
        error, sent, seconds = _load(executor, layout, top, engine_name(temp), have)
        if error is not None:
            if sent:  # a file changed under the stream, or the engine refused the layer
                cache.forget_hashes()
            return fail(error)
        job.result.model_bytes_sent = sent
        what = f"{human(sent)} of model layers" if sent else "no model bytes: it has them"
        steps.report(f"loading into the engine ({what})", seconds)
    if plan.dry_run:
        started = time.perf_counter()
        outputs, said = executor.describe(temp)
        lines = tuple(ln for ln in said.splitlines() if ln.strip())
        if outputs is None:
            steps.log(("predicting the example input", *lines, "ERROR"))
            return fail(
                (lines or ("the dry prediction failed",))[-1].removeprefix("omibuild: ")[:400]
            )
        loaded = frozenset(d for d, _ in layout.blobs(top))
        top = layout.indexed(layout.append(top, [_outputs_layer(outputs)]), annotations)
        error, _, _ = _load(executor, layout, top, engine_name(temp), loaded)
        if error is not None:
            return fail(error)
        steps.report("predicting the example input", time.perf_counter() - started, lines)
    top = layout.indexed(top, annotations)
    result.digest = str(top["digest"])
    with contextlib.suppress(LayoutError, KeyError, OSError, ValueError):
        job.result.venv_bytes = layout.step_bytes(top, "/opt/omi/venv")
    if job.output.startswith("oci:"):
        started = time.perf_counter()
        if error := _write_oci(layout, top, job.output[4:], plan):
            return fail(error)
        steps.report(f"writing {job.output[4:]}", time.perf_counter() - started)
    elif job.output == "push":
        started = time.perf_counter()
        mounts = {a.blob.digest: list(pushed_to(cache, a.layer)) for a in model if a.layer}
        try:
            pushed = push_image(plan.image_refs, *layout.push_parts(top), mount_from=mounts)
        except RegistryError as err:
            return fail(_registry_error(err))
        except LayerFileChanged as err:
            cache.forget_hashes()
            return fail(str(err))
        job.result.model_bytes_sent += sum(
            a.layer.model_bytes for a in model if a.layer and a.blob.digest in pushed.uploaded
        )
        where = {f"{h}/{r}" for h, r, _ in map(split_reference, plan.image_refs)}
        for a in model:  # where the next push of this layer to another repository can mount it
            if a.layer is not None:
                kept = tuple(w for w in pushed_to(cache, a.layer) if w not in where)
                remember_blob(cache, a.layer, a.blob.digest, (*kept, *sorted(where)))
        moved = f"{human(pushed.uploaded_bytes)} uploaded, {pushed.present} blobs already there"
        if pushed.mounted:
            moved += f", {pushed.mounted} mounted from another repository"
        steps.report(f"pushing to the registry ({moved})", time.perf_counter() - started)
    layout.collect([rest])  # what the next build's export can reuse; nothing else
    return None


def _load(
    executor: Executor, layout: Layout, top: dict[str, Any], name: str, have: frozenset[str]
) -> tuple[str | None, int, float]:
    """(why the load failed or None, model bytes sent, seconds)."""
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n

    started = time.perf_counter()
    for attempt in (1, 2):
        sent = 0
        entries, _ = layout.archive(top, name, skip=have, on_bytes=count)
        try:
            error = executor.load(tar_chunks(entries))
        except LayerFileChanged as err:
            return str(err), sent, time.perf_counter() - started
        if error is None or attempt == 2 or not _LOST_SNAPSHOT.search(error):
            break
    return error, sent, time.perf_counter() - started


# containerd's garbage collector removing a snapshot that an unpack is about to build on, while
# another image is removed beside it (containerd/containerd#3787, #10835; seen twice in one full
# parallel test run). The blobs are still held, so the same load again unpacks them afresh.
_LOST_SNAPSHOT = re.compile(r"parent snapshot \S+ does not exist: not found")


def _write_oci(layout: Layout, top: dict[str, Any], dest: str, plan: Plan) -> str | None:
    try:
        layout.write_tarball(top, Path(dest), plan.image_refs[0])
    except LayerFileChanged as err:
        return str(err)
    except OSError as err:
        return f"cannot write {dest}: {err.strerror or err}"
    return None


def registry_address(repository: str) -> tuple[str, int]:
    """(host, port) of the registry an image repository names, as Docker reads the name."""
    first = repository.split("/", 1)[0]
    if "/" not in repository or not ("." in first or ":" in first or first == "localhost"):
        return "registry-1.docker.io", 443  # Docker Hub: `user/repo` or `repo`
    host, _, port = first.rpartition(":") if ":" in first else (first, "", "")
    if not port.isdigit():
        return first, 443
    return host, int(port)


def check_registry(repository: str, timeout: float = 5.0) -> None:
    """Before any build: a push target that does not answer is one line (exit 2), not a whole
    build and then a push error."""
    host, port = registry_address(repository)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"cannot reach the registry {host}:{port} for {repository}: {reason}",
            hint="check image.repository, and that the registry is up and reachable from here",
        ) from None


def _restore_tags(executor: Executor, before: dict[str, str | None]) -> None:
    """A push that failed leaves the local tags as they were (BuildKit's image exporter names
    the image in the local store before it pushes)."""
    for ref, old in before.items():
        if executor.image_digest(ref) == old:
            continue
        if old is None:
            executor.remove_tag(ref)
        else:
            executor.tag(old, ref)


def apply_all(
    targets: list[Target],
    executor: Executor,
    cache: Cache,
    progress: Progress,
    options: ApplyOptions,
) -> list[ApplyResult]:
    """Build every plan that is not up to date: one build, or one bake for several."""
    start = time.perf_counter()
    jobs = [_job(t, executor, options) for t in targets]
    pending = [j for j in jobs if j.result.status == "pending"]
    if not pending:
        return [j.result for j in jobs]
    for repository in sorted({j.plan.repository for j in pending if j.output == "push"}):
        check_registry(repository)
    pushed_before = {
        ref: executor.image_digest(ref)
        for j in pending
        if j.output == "push"
        for ref in j.plan.image_refs
    }
    with contextlib.ExitStack() as stack:
        requests = []
        for job in pending:
            t = job.target
            ctx, downloaded = stack.enter_context(
                staged_context(
                    job.plan,
                    t.resolved,
                    t.manifest_root,
                    t.code_path,
                    cache,
                    progress,
                    t.manifest_file,
                    offline=options.offline,
                    analysis=t.analysis,
                )
            )
            job.layout = cache.root / "images" / context_dir(cache, t.manifest_file).name
            stack.enter_context(_cache_dir_lock(job.layout, progress))
            Layout(job.layout).clear()
            secrets = build_secrets(t.secrets)
            job.result.downloaded_bytes = downloaded
            requests.append(_request(job, ctx, secrets, cache, options))
        for directory in sorted({d for r in requests for d in _local_cache_dirs(r)}):
            stack.enter_context(_cache_dir_lock(directory, progress))
        hashing = stack.enter_context(futures.ThreadPoolExecutor(max_workers=1))
        layers = [
            hashing.submit(
                model_layers,
                r.context,
                j.plan,
                cache,
                upload=j.output == "push" and not j.plan.dry_run,
            )
            for j, r in zip(pending, requests, strict=True)
        ]
        try:
            results = (
                [executor.build(requests[0])] if len(requests) == 1 else executor.bake(requests)
            )
            results = _retry_transient_failures(executor, requests, results, progress)
            # asked only when an image is loaded (a push without a dry prediction loads none)
            loads = any(j.output == "load" or j.plan.dry_run for j in pending)
            blobs_here = loads and executor.keeps_blobs()
            for job, result, made in zip(pending, results, layers, strict=True):
                if result.ok:
                    _finish(job, result, made, executor, cache, options, blobs_here)
                else:
                    futures.wait([made])
            with _deferred_interrupts():
                for job, result in zip(pending, results, strict=True):
                    if result.ok and job.output == "load":
                        for ref in job.plan.image_refs:
                            executor.tag(job.temp, ref)
            failed_pushes = [
                ref
                for job, result in zip(pending, results, strict=True)
                if job.output == "push" and not result.ok
                for ref in job.plan.image_refs
            ]
            _restore_tags(executor, {ref: pushed_before[ref] for ref in failed_pushes})
        finally:
            for job in pending:
                executor.remove_tag(job.temp)
    elapsed = time.perf_counter() - start
    for job, result in zip(pending, results, strict=True):
        job.result.status = "built" if result.ok else "failed"
        job.result.seconds = elapsed
        job.result.digest = result.digest
        job.result.cached_steps, job.result.total_steps = result.cached_steps, result.total_steps
        if not result.ok and result.log_path:  # the fault in one line, the log in a file
            job.result.error = f"{result.error or 'build failed'}; full log: {result.log_path}"
        elif not result.ok:  # --progress plain: the log is on the screen already
            tail = "\n".join(result.log_tail[-25:])
            job.result.error = f"{result.error or 'build failed'}\n{tail}"
    return [j.result for j in jobs]


# The engine's own records, not a file the Dockerfile names ("failed to compute cache key: ...
# not found" is the build's own error and is not retried).
_NOT_FOUND = re.compile(
    r"failed to solve: (?:(?:lease|content digest|snapshot) [^\n]*: )?not found\s*$"
    # a cache record whose input the engine no longer has: seen when builds of the same
    # dependencies share records while other builds and image removals run beside them
    r"|failed to get state for index \d+ on "
    # BuildKit's solver dropping an edge that another build merged with and still needs
    # (moby/buildkit#2303): seen once in a full parallel test run; the same build again is cached
    r"|failed to get edge: inconsistent graph state",
    re.MULTILINE,
)


def _retry_transient_failures(
    executor: Executor,
    requests: list[BuildRequest],
    results: list[BuildResult],
    progress: Progress,
) -> list[BuildResult]:
    """Build again, once, what failed for a reason that is the engine's and not the build's.

    - The image was made but exporting the cache failed: build again (all from the engine's
      cache) without the export. The cache is an optimisation, never a reason to fail;
      BuildKit 0.13 sometimes fails the export with "not found" despite ignore-error.
    - "failed to solve: not found" anywhere else: BuildKit with the containerd image store
      sometimes loses a content or lease record while another build or an image removal runs
      beside it (moby/buildkit, containerd/nerdctl#4142); or "inconsistent graph state", its
      solver's own race between concurrent builds (moby/buildkit#2303). The same build again
      is all cached.
    Any other failure is the build's own and is reported as it is."""
    out = list(results)
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if result.ok:
            continue
        tail = "\n".join([*result.log_tail, result.error or ""])
        if result.log_path is not None:  # structured progress: the step that failed says it
            cache_failed = (result.failed_step or "").startswith("exporting cache")
        else:
            cache_failed = bool(re.search(r"exporting cache|cache manifest", tail))
        if request.cache_to and cache_failed:
            progress.line(
                f"{request.tags[0]}: exporting the build cache failed "
                f"({result.error or 'error'}); building again without exporting it"
            )
            out[i] = executor.build(replace(request, cache_to=()))
        elif _NOT_FOUND.search(tail):
            progress.line(
                f"{request.tags[0]}: the engine lost a record during the build "
                f"({result.error or 'not found'}); building it again"
            )
            out[i] = executor.build(request)
    return out


def _local_cache_dirs(request: BuildRequest) -> set[Path]:
    """The local cache directories a build reads or writes."""
    caches = (*request.cache_from, *request.cache_to)
    return {Path(c.ref).resolve() for c in caches if c.type == "local" and c.ref}


@contextlib.contextmanager
def _cache_dir_lock(directory: Path, progress: Progress) -> Iterator[None]:
    """One build at a time per local cache directory: BuildKit's exporter fails ("not
    found") when two builds write the same directory at once."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.line(f"waiting for another build using the cache {directory}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
