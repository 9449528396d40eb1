"""Apply one plan: skip if the image is up to date, stage the context, build through the
executor, append the model layers omibuild makes (engine/oci.py), and tag only on success
(no partial tags, no staging left behind)."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

from omibuild.contract import PLAN_DIGEST_LABEL
from omibuild.engine.assemble import finish, ingester, model_layers
from omibuild.engine.context import context_dir, staged_context
from omibuild.engine.failures import retry_transient_failures
from omibuild.engine.images import same_platform
from omibuild.engine.jobs import ApplyOptions, ApplyResult, ApplyStatus, Job, Target
from omibuild.engine.oci import Layout
from omibuild.engine.request import BuildRequest, BuildSecret, Executor
from omibuild.engine.secrets import build_secrets
from omibuild.errors import Terminated, UsageError
from omibuild.manifest.model import EXPORTS
from omibuild.planning.plan import CacheSpec, Plan
from omibuild.progress import Progress
from omibuild.render.dockerfile import step_ids
from omibuild.store.cache import Cache

__all__ = ["ApplyOptions", "ApplyResult", "Target", "apply_all"]


def up_to_date(plan: Plan, executor: Executor, output: str) -> bool:
    """Does the target already carry this plan's digest (locally, or in the registry)?"""
    if output.startswith("oci:"):
        return False
    if output == "push":
        for ref in plan.image_refs:
            # a docker-format manifest has no annotations: its config's labels say
            docker = plan.image_format == "docker"
            said = executor.remote_labels(ref) if docker else executor.remote_annotations(ref)
            if not said or said.get(PLAN_DIGEST_LABEL) != plan.digest:
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


def refuse_unoffered_platforms(plan: Plan, executor: Executor) -> None:
    """A platform the base image does not offer would be built from another platform's
    base, its binaries the wrong machine's (BuildKit takes what there is and says nothing):
    refused, naming the base and what it offers. A base the engine lacks is not judged."""
    if not plan.platforms:
        return
    offered = executor.image_platforms(plan.base_image)
    if offered is None:
        return
    missing = [p for p in plan.platforms if not any(same_platform(p, o) for o in offered)]
    if missing:
        raise UsageError(
            f"{plan.name}: base image {plan.base_image} offers {', '.join(offered)}, not "
            f"{', '.join(missing)} (image.platforms or --platform)",
            hint=f"use a base image with {', '.join(missing)}, or build "
            f"{', '.join(p for p in plan.platforms if p not in missing) or 'its platforms'}",
        )


def _job(target: Target, executor: Executor, options: ApplyOptions) -> Job:
    plan = target.plan
    if options.platforms:
        plan = replace(plan, platforms=options.platforms)
    refuse_unoffered_platforms(plan, executor)
    if options.exports:  # --export adds to omi.yaml's export
        kinds = set(plan.exports) | set(options.exports)
        plan = replace(plan, exports=tuple(k for k in EXPORTS if k in kinds))
    if plan.exports and plan.image_format == "docker":
        raise UsageError(
            f"{plan.name}: an export is a manifest in the image's index; image.format docker "
            "has none",
            hint="leave image.format at oci to export",
        )
    output = "push" if options.output == "load" and plan.options.push else options.output
    if output == "push" and plan.repository.startswith("omibuild.local/"):
        raise UsageError(f"{plan.name}: pushing needs image.repository in omi.yaml")
    if options.sign is not None and output != "push":
        raise UsageError(
            f"{plan.name}: --sign signs what is pushed", hint="add --push (and image.repository)"
        )
    if plan.image_format == "docker" and len(plan.platforms) > 1:
        raise UsageError(
            f"{plan.name}: image.format docker holds one platform, not {len(plan.platforms)}",
            hint="give one --platform, or leave image.format at oci",
        )
    # --export is not in the plan's digest: an image built without it is not up to date
    fresh = not options.no_cache and not options.exports and up_to_date(plan, executor, output)
    status = ApplyStatus.UP_TO_DATE if fresh else ApplyStatus.PENDING
    temp = f"{plan.repository}:omibuild-tmp-{uuid.uuid4().hex[:12]}"
    result = ApplyResult(plan.name, plan.image_refs, status)
    return Job(target, plan, output, temp, result)


def _request(
    job: Job, ctx: Path, secrets: tuple[BuildSecret, ...], cache: Cache, options: ApplyOptions
) -> BuildRequest:
    plan = job.plan
    cache_from, cache_to = cache_refs(plan, options, cache)
    assert job.layout is not None
    return BuildRequest(
        context=ctx,
        dockerfile=ctx / "Dockerfile",
        tags=(job.temp,),
        annotations=plan.annotations,  # manifests stay small: the state is the config's
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
        source_date_epoch=plan.source_date_epoch,
        progress=options.progress,
        step_ids=step_ids(plan),
    )


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
    pending = [j for j in jobs if j.result.status == ApplyStatus.PENDING]
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
                staged_context(t, job.plan, cache, progress, offline=options.offline)
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
                ingest=ingester(executor, j),
            )
            for j, r in zip(pending, requests, strict=True)
        ]
        try:
            results = (
                [executor.build(requests[0])] if len(requests) == 1 else executor.bake(requests)
            )
            results = retry_transient_failures(executor, requests, results, progress)
            # asked only when an image is loaded (a push without a dry prediction loads none)
            loads = any(j.output == "load" or j.plan.dry_run for j in pending)
            blobs_here = loads and executor.keeps_blobs()
            for job, result, made in zip(pending, results, layers, strict=True):
                if result.ok:
                    finish(job, result, made, executor, cache, options, blobs_here)
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
                executor.remove_tag(job.model_temp)
    elapsed = time.perf_counter() - start
    for job, result in zip(pending, results, strict=True):
        job.result.status = ApplyStatus.BUILT if result.ok else ApplyStatus.FAILED
        job.result.failure_kind = None if result.ok else (result.failure_kind or "build")
        job.result.seconds = elapsed
        job.result.digest = result.digest
        job.result.cached_steps, job.result.total_steps = result.cached_steps, result.total_steps
        if not result.ok and result.log_path:  # the fault in one line, the log in a file
            job.result.error = f"{result.error or 'build failed'}; full log: {result.log_path}"
        elif not result.ok:  # --progress plain: the log is on the screen already
            tail = "\n".join(result.log_tail[-25:])
            job.result.error = f"{result.error or 'build failed'}\n{tail}"
    return [j.result for j in jobs]


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
