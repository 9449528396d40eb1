"""Models from the Hugging Face Hub (or any endpoint speaking its API).

The revision is pinned to a commit sha; files are filtered by allow/ignore patterns and
downloaded once, into the cache, keyed by (endpoint, repo, commit, patterns). ``HF_TOKEN``
is read by huggingface_hub itself and stays on the host.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omibuild.errors import SourceError
from omibuild.manifest.model import HuggingFaceSource, SourceSpec
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
    with_retries,
)
from omibuild.store.cache import Cache

DEFAULT_ENDPOINT = "https://huggingface.co"


class HuggingFaceModelSource:
    def __init__(self, cache: Cache, progress: Progress) -> None:
        self.cache = cache
        self.progress = progress
        self.downloaded_bytes = 0

    @staticmethod
    def _endpoint(spec: HuggingFaceSource) -> str:
        return (spec.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")

    def _call(self, spec: HuggingFaceSource, endpoint: str, fn: Any) -> Any:
        from huggingface_hub import errors as hf

        def once() -> Any:
            try:
                return fn()
            except hf.HfHubHTTPError as exc:
                status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
                if status >= 500 or status == 429:
                    raise Transient(exc) from exc
                raise
            except (OSError, TimeoutError) as exc:
                raise Transient(exc) from exc
            except Exception as exc:
                if type(exc).__name__ in (
                    "ConnectError",
                    "ReadTimeout",
                    "ConnectTimeout",
                    "RemoteProtocolError",
                ):
                    raise Transient(exc) from exc
                raise

        where = f"{spec.repo}@{spec.revision} on {host_of(endpoint)}"
        try:
            return with_retries(once)
        except hf.GatedRepoError:
            raise SourceError(
                f"{where} is gated: accept its terms on the Hub, then set HF_TOKEN",
                hint="the token of an account that has been granted access",
            ) from None
        except hf.RevisionNotFoundError:
            raise SourceError(
                f"{where}: revision {spec.revision!r} does not exist",
                hint="use a branch, tag or full commit sha of the repo",
            ) from None
        except hf.RepositoryNotFoundError:
            token = "set" if os.environ.get("HF_TOKEN") else "not set"
            raise SourceError(
                f"{where}: repository not found, or private (HF_TOKEN is {token})",
                hint="check model.source.huggingface.repo and the token",
            ) from None
        except (hf.EntryNotFoundError, hf.RemoteEntryNotFoundError) as exc:
            raise SourceError(f"{where}: file missing: {first_line(exc)}") from None
        except hf.HfHubHTTPError as exc:
            raise SourceError(f"{where}: the Hub answered {first_line(exc)}") from None
        except (OSError, TimeoutError) as exc:
            raise SourceError(
                f"cannot reach the Hugging Face Hub at {host_of(endpoint)}: {first_line(exc)}",
                hint="check HF_ENDPOINT and the network",
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise SourceError(
                    f"cannot reach the Hugging Face Hub at {host_of(endpoint)}: {first_line(exc)}",
                    hint="check HF_ENDPOINT and the network",
                ) from None
            raise

    def resolve(self, spec: SourceSpec, root: Path) -> ResolvedSource:
        assert isinstance(spec, HuggingFaceSource)
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        endpoint = self._endpoint(spec)
        api = HfApi(endpoint=endpoint)
        info = self._call(
            spec,
            endpoint,
            lambda: api.repo_info(
                spec.repo, revision=spec.revision, repo_type=spec.repo_type, files_metadata=True
            ),
        )
        if info.id and info.id.lower() != spec.repo.lower():
            raise SourceError(
                f"{spec.repo} was renamed to {info.id}",
                hint=f"set model.source.huggingface.repo to {info.id}",
            )
        commit: str = info.sha
        siblings = list(
            filter_repo_objects(
                info.siblings or [],
                allow_patterns=list(spec.allow) or None,
                ignore_patterns=list(spec.ignore) or None,
                key=lambda s: s.rfilename,
            )
        )
        if not siblings:
            raise SourceError(f"{spec.repo}@{commit[:12]}: no files match allow/ignore patterns")
        names = sorted(s.rfilename for s in siblings)
        key = f"hf|{endpoint}|{spec.repo_type}|{spec.repo}|{commit}|{','.join(names)}"
        with self.cache.lock(key):
            record = self.cache.get_index(key)
            if record is None:
                record = self._download(spec, endpoint, commit, names, key)
        cached = ResolvedSource.from_dict(record)
        meta = {
            "repo": spec.repo,
            "commit": commit,
            "revision": spec.revision,
            "endpoint_host": host_of(endpoint),
        }
        card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
        license_ = card.get("license") if isinstance(card, dict) else getattr(card, "license", None)
        if license_:
            meta["license"] = str(license_)
        return ResolvedSource(
            kind="huggingface",
            uri=f"hf://{spec.repo}@{spec.revision}",
            origin_id=commit,
            version=commit[:12],
            files=cached.files,
            metadata=tuple(sorted(meta.items())),
            requirements=cached.requirements,
            flavor_hint=cached.flavor_hint,
            location=key,
        )

    def _get(
        self, spec: HuggingFaceSource, endpoint: str, commit: str, names: list[str], tmp: Path
    ) -> None:
        from huggingface_hub import hf_hub_download

        for name in names:
            self._call(
                spec,
                endpoint,
                lambda n=name: hf_hub_download(
                    spec.repo,
                    n,
                    repo_type=spec.repo_type,
                    revision=commit,
                    local_dir=tmp,
                    endpoint=endpoint,
                ),
            )
        # huggingface_hub keeps bookkeeping under .cache/ in local_dir: not model files
        shutil.rmtree(tmp / ".cache", ignore_errors=True)

    def _download(
        self, spec: HuggingFaceSource, endpoint: str, commit: str, names: list[str], key: str
    ) -> dict[str, Any]:
        with self.cache.tmp_dir() as tmp:
            self.progress.line(f"downloading {spec.repo}@{commit[:12]} ({len(names)} files)")
            self._get(spec, endpoint, commit, names, tmp)
            requirements, flavor, _ = model_metadata(tmp)
            files = publish_tree(self.cache, tmp)
        self.downloaded_bytes += sum(f.size for f in files)
        record = ResolvedSource(
            kind="huggingface",
            uri=spec.repo,
            origin_id=commit,
            version=commit[:12],
            files=tuple(sorted(files)),
            requirements=requirements,
            flavor_hint=flavor,
        ).to_dict()
        self.cache.put_index(key, record)
        return record

    def fetch(self, resolved: ResolvedSource, dest: Path) -> int:
        with self.cache.lock(resolved.location):
            missing = fetch_from_cache(self.cache, resolved.files, dest)
            if not missing:
                return 0
            _, endpoint, repo_type, repo, commit, _names = resolved.location.split("|")
            spec = HuggingFaceSource(
                repo=repo, revision=commit, repo_type=repo_type, endpoint=endpoint
            )
            with self.cache.tmp_dir() as tmp:
                self._get(spec, endpoint, commit, [f.path for f in missing], tmp)
                got = publish_tree(self.cache, tmp)
            fetched = link_downloaded(self.cache, missing, got, dest, f"{repo}@{commit[:12]}")
            self.downloaded_bytes += fetched
            return fetched
