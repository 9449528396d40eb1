"""Model sources: a name → implementation registry. Implementations import their heavy
clients (mlflow, huggingface_hub) lazily, so validating a manifest stays fast."""

from __future__ import annotations

import importlib
import importlib.util

from omibuild.errors import UsageError
from omibuild.progress import Progress
from omibuild.sources.base import ModelFile, ResolvedSource, Source
from omibuild.store.cache import Cache

# name (the key under model.source in omi.yaml) → "module:Class"
SOURCES: dict[str, str] = {
    "local": "omibuild.sources.local:LocalModelSource",
    "mlflow": "omibuild.sources.mlflow:MlflowModelSource",
    "huggingface": "omibuild.sources.huggingface:HuggingFaceModelSource",
}


# Remote sources need a client that is an extra of the package: `pip install omibuild[mlflow]`.
CLIENTS = {"mlflow": ("mlflow", "mlflow"), "huggingface": ("huggingface_hub", "huggingface")}


def get_source(kind: str, cache: Cache, progress: Progress) -> Source:
    if kind in CLIENTS and importlib.util.find_spec(CLIENTS[kind][0]) is None:
        raise UsageError(
            f"model.source.{kind} needs the {CLIENTS[kind][0]} package, which is not installed",
            hint=f"pip install 'omibuild[{CLIENTS[kind][1]}]'",
        )
    module, cls = SOURCES[kind].split(":")
    source: Source = getattr(importlib.import_module(module), cls)(cache, progress)
    return source


__all__ = ["SOURCES", "Cache", "ModelFile", "Progress", "ResolvedSource", "Source", "get_source"]
