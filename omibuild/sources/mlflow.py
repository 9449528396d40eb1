"""Models from an MLflow registry or run.

Resolution goes alias → version → run id; the files are downloaded by version, once: the
cache index maps (tracking server, model, version) to the file list, so a second fetch of an
unchanged model downloads nothing. Auth comes from MLflow's own environment variables only.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omibuild.contract import INPUTS_KEY, OUTPUTS_KEY
from omibuild.errors import SourceError
from omibuild.manifest.model import MlflowSource, SourceSpec
from omibuild.progress import Progress
from omibuild.sources.base import ResolvedSource
from omibuild.sources.metadata import model_metadata
from omibuild.sources.remote import (
    Transient,
    fetch_from_cache,
    first_line,
    host_of,
    link_downloaded,
    publish_tree,
    redact,
    with_retries,
)
from omibuild.store.cache import Cache

_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>.+)$")


@contextlib.contextmanager
def _http_defaults() -> Iterator[None]:
    """MLflow retries for minutes by default; we retry ourselves, briefly and visibly."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    saved = {k: os.environ.get(k) for k in defaults}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)


def _is_transient(exc: BaseException) -> bool:
    text = str(exc)
    markers = (
        "Connection refused",
        "ConnectionError",
        "Max retries exceeded",
        "timed out",
        "Timeout",
        "status code 50",
        "Failed to establish",
        "RemoteDisconnected",
        "Temporary failure in name resolution",
        "Name or service not known",
    )
    return any(m in text for m in markers)


def _is_missing(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


class MlflowModelSource:
    def __init__(self, cache: Cache, progress: Progress) -> None:
        self.cache = cache
        self.progress = progress
        self.downloaded_bytes = 0  # over this instance's life: what tests and progress report

    def _tracking_uri(self, spec: MlflowSource) -> str:
        uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise SourceError(
                "no MLflow tracking server configured",
                hint="set MLFLOW_TRACKING_URI or model.source.mlflow.tracking_uri",
            )
        return uri

    def _call(self, tracking: str, what: str, fn: Any, *args: Any) -> Any:
        def once() -> Any:
            try:
                return fn(*args)
            except Exception as exc:
                if _is_transient(exc):
                    raise Transient(exc) from exc
                raise

        try:
            with _http_defaults():
                return with_retries(once)
        except Exception as exc:
            if _is_transient(exc):
                raise SourceError(
                    f"cannot reach the MLflow tracking server at {host_of(tracking)} while "
                    f"looking up {what}: {first_line(exc)}",
                    hint="check MLFLOW_TRACKING_URI / model.source.mlflow.tracking_uri",
                ) from None
            if _is_missing(exc):
                raise SourceError(
                    f"MLflow at {host_of(tracking)} has no {what}",
                    hint="check the name, version or alias in model.source.mlflow.uri",
                ) from None
            raise SourceError(f"MLflow at {host_of(tracking)}: {what}: {first_line(exc)}") from None

    def resolve(self, spec: SourceSpec, root: Path) -> ResolvedSource:
        assert isinstance(spec, MlflowSource)
        from mlflow.tracking import MlflowClient

        tracking = self._tracking_uri(spec)
        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        meta: dict[str, str] = {"tracking_host": host_of(tracking)}
        if m := _MODELS.match(spec.uri):
            name = m["name"]
            if m["alias"]:
                mv = self._call(
                    tracking,
                    f"alias @{m['alias']} of model {name!r}",
                    client.get_model_version_by_alias,
                    name,
                    m["alias"],
                )
                meta["alias"] = m["alias"]
            else:
                mv = self._call(
                    tracking,
                    f"version {m['version']} of model {name!r}",
                    client.get_model_version,
                    name,
                    m["version"],
                )
            meta |= {"registered_model": name, "model_version": str(mv.version)}
            run_id = mv.run_id or ""
            download_uri = f"models:/{name}/{mv.version}"
            version = str(mv.version)
            if getattr(mv, "model_id", None):
                meta["model_id"] = str(mv.model_id)
        elif m := _RUNS.match(spec.uri):
            run_id, download_uri, version = m["run"], spec.uri, m["run"][:12]
        else:  # the schema prevents this
            raise SourceError(f"unsupported MLflow URI {spec.uri!r}")
        if run_id:
            run = self._call(tracking, f"run {run_id}", client.get_run, run_id)
            meta |= {"run_id": run_id, "experiment_id": str(run.info.experiment_id)}
        origin = run_id or meta.get("model_id", "")
        key = f"mlflow|{redact(tracking)}|{download_uri}|{origin}"
        with self.cache.lock(key):
            record = self.cache.get_index(key)
            if record is None:
                record = self._download(tracking, download_uri, key)
        resolved = ResolvedSource.from_dict(record)
        meta |= dict(resolved.metadata)
        return ResolvedSource(
            kind="mlflow",
            uri=spec.uri,
            origin_id=origin,
            version=version,
            files=resolved.files,
            metadata=tuple(sorted(meta.items())),
            requirements=resolved.requirements,
            flavor_hint=resolved.flavor_hint,
            location=f"{key}|{tracking}",
        )

    def _download(self, tracking: str, uri: str, key: str) -> dict[str, Any]:
        with self.cache.tmp_dir() as tmp:
            self.progress.line(f"downloading {uri} from {host_of(tracking)}")
            root = self._download_to(tracking, uri, tmp)
            requirements, flavor, found = model_metadata(root)
            files = publish_tree(self.cache, root)
        record = ResolvedSource(
            kind="mlflow",
            uri=uri,
            origin_id="",
            version="",
            files=tuple(sorted(files)),
            # what the model's own MLmodel declares (its signature's outputs)
            metadata=tuple(
                sorted((k, v) for k, v in found.items() if k in (INPUTS_KEY, OUTPUTS_KEY))
            ),
            requirements=requirements,
            flavor_hint=flavor,
        ).to_dict()
        self.downloaded_bytes += sum(f.size for f in files)
        self.cache.put_index(key, record)
        return record

    def _download_to(self, tracking: str, uri: str, tmp: Path) -> Path:
        """Download into tmp; returns the model's root directory (MLflow may nest it)."""
        import mlflow.artifacts

        local = self._call(
            tracking,
            f"the artifacts of {uri}",
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking, registry_uri=tracking
            ),
        )
        root = Path(local)
        return root if root.is_dir() else root.parent

    def fetch(self, resolved: ResolvedSource, dest: Path) -> int:
        key, tracking = resolved.location.rsplit("|", 1)
        with self.cache.lock(key):
            missing = fetch_from_cache(self.cache, resolved.files, dest)
            if not missing:
                return 0
            uri = key.split("|")[2]
            with self.cache.tmp_dir() as tmp:
                self.progress.line(
                    f"downloading {uri} from {host_of(tracking)} "
                    f"({len(missing)} file(s) missing from the cache)"
                )
                got = publish_tree(self.cache, self._download_to(tracking, uri, tmp))
            fetched = link_downloaded(self.cache, missing, got, dest, uri)
            self.downloaded_bytes += fetched
            return fetched
