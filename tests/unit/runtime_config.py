"""A minimal omi.json for runtime tests: a sklearn model whose default interface is
kfserving; keyword arguments add or replace fields."""

from __future__ import annotations

import json
from pathlib import Path


def omi_json(directory: Path, interfaces: dict[str, object], **extra: object) -> Path:
    config = {
        "name": "m",
        "version": "1",
        "flavor": "sklearn",
        "default_interface": "kfserving",
        "env_defaults": {"HTTP_PORT": "8080", "PROTOCOL": "v2"},
        "interfaces": interfaces,
        "model": {"digest": "sha256:" + "0" * 64, "files": []},
        "origin": {"source": "local", "uri": "local:m", "id": "m"},
        **extra,
    }
    path = directory / "omi.json"
    path.write_text(json.dumps(config))
    return path
