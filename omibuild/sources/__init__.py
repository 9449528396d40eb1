"""Model sources: a name → implementation registry. Implementations import their heavy
clients (mlflow, huggingface_hub) lazily, so validating a manifest stays fast."""

from __future__ import annotations

import importlib

from omibuild.sources.base import ModelFile, ResolvedSource, Source
from omibuild.sources.cache import Cache
from omibuild.sources.progress import Progress

# name (the key under model.source in omi.yaml) → "module:Class"
SOURCES: dict[str, str] = {
    "local": "omibuild.sources.local:LocalModelSource",
    "mlflow": "omibuild.sources.mlflow:MlflowModelSource",
    "huggingface": "omibuild.sources.huggingface:HuggingFaceModelSource",
}


def get_source(kind: str, cache: Cache, progress: Progress) -> Source:
    module, cls = SOURCES[kind].split(":")
    source: Source = getattr(importlib.import_module(module), cls)(cache, progress)
    return source


__all__ = ["SOURCES", "Cache", "ModelFile", "Progress", "ResolvedSource", "Source", "get_source"]
