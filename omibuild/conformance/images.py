"""What an image says about itself through its labels (any OMI image, not only ours)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from omibuild import contract
from omibuild.errors import UsageError


def label_json(labels: dict[str, str], key: str) -> Any:
    """A label value as JSON, falling back to the raw string (Chassis writes some raw)."""
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass(frozen=True)
class ImageInterfaces:
    interfaces: dict[str, list[str]]  # interface → protocols
    default: str
    model_name: str | None
    port: str | None

    def protocol_for(self, interface: str, wanted: str | None) -> str:
        protocols = self.interfaces.get(interface) or ["v1"]
        if wanted and wanted not in protocols:
            raise UsageError(
                f"{interface} in this image has protocols {', '.join(protocols)}, not {wanted}"
            )
        return wanted or protocols[-1]


def interfaces_of(labels: dict[str, str]) -> ImageInterfaces:
    spec = label_json(labels, contract.INTERFACES_LABEL)
    protocols = label_json(labels, contract.PROTOCOLS_LABEL)
    interfaces: dict[str, list[str]] = {}
    if isinstance(spec, list) and isinstance(protocols, list):
        for name, protos in zip(spec, protocols, strict=False):
            interfaces[str(name)] = [str(p) for p in protos] if isinstance(protos, list) else []
    extensions = label_json(labels, contract.EXTENSIONS_LABEL)
    for name in extensions if isinstance(extensions, list) else []:
        interfaces[str(name)] = ["v1"]
    default = labels.get(contract.DEFAULT_INTERFACE_LABEL) or next(iter(interfaces), "")
    name = label_json(labels, contract.MODEL_NAME_LABEL)
    return ImageInterfaces(
        interfaces, default, str(name) if name else None, labels.get(contract.PORT_LABEL)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
