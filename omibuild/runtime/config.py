"""Runtime configuration: omi.json (decided at build time) + the environment (run time).

OMI spec 1.1 names are honoured exactly: INTERFACE, PROTOCOL, HTTP_PORT, MODEL_NAME; plus
PSC_MODEL_PORT (modzy), AIP_HTTP_PORT / AIP_HEALTH_ROUTE / AIP_PREDICT_ROUTE (Vertex AI) and
SAGEMAKER_BIND_TO_PORT (SageMaker)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omibuild.runtime.document import DocumentError, OmiDocument

DEFAULT_CONFIG = "/opt/omi/omi.json"


class ConfigError(Exception):
    """A one-line reason the container cannot start."""


@dataclass(frozen=True)
class RuntimeConfig:
    interface: str
    protocol: str
    port: int
    grpc_port: int | None
    model_name: str
    model_version: str
    model_dir: Path
    code_dir: Path
    raw: dict[str, Any]  # omi.json as JSON: what a flavor's load (a user's predictor) reads
    document: OmiDocument
    env: Mapping[str, str] = field(repr=False, default_factory=dict)
    protocols: tuple[str, ...] = ()
    workers: int = 1
    max_body_bytes: int = 64 << 20
    max_batch_size: int = 0
    max_latency_ms: float = 5.0
    verify: bool = True
    predict_threads: int = 1
    coalesce_rows: int = 256
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive
    body_timeout: float = 60.0  # seconds for its body, once the headers are in
    max_connections: int = 1000  # beyond this, new requests get 503 at once
    decode_process_bytes: int = 2 << 20  # bodies this large are decoded in a helper process
    access_log: bool = False
    analysis_dir: Path = Path("/opt/omi/analysis")  # explain's background, drift's reference

    @property
    def flavor(self) -> str:
        return self.document.flavor


def _port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{name}={port} is out of range 1-65535")
    return port


def _chosen_port(
    interface: str,
    declared: int,
    env: Mapping[str, str],
    defaults: Mapping[str, str],
    is_default: bool,
) -> int:
    platform = {
        "modzy": "PSC_MODEL_PORT",
        "vertex": "AIP_HTTP_PORT",
        "sagemaker": "SAGEMAKER_BIND_TO_PORT",
    }.get(interface)
    if platform and env.get(platform):
        return _port(env[platform], platform)
    http = env.get("HTTP_PORT")
    # The image bakes HTTP_PORT for its default interface; switching INTERFACE without setting
    # HTTP_PORT gives the interface its own declared port.
    if http and (is_default or http != defaults.get("HTTP_PORT")):
        return _port(http, "HTTP_PORT")
    return declared


def load_config(env: Mapping[str, str] | None = None) -> RuntimeConfig:
    env = os.environ if env is None else env
    path = Path(env.get("OMI_CONFIG", DEFAULT_CONFIG))
    try:
        raw: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    try:
        document = OmiDocument.from_dict(raw)
    except DocumentError as err:
        raise ConfigError(f"{path}: {err}") from None
    interfaces = document.interfaces
    defaults = document.env_defaults
    interface = env.get("INTERFACE") or document.default_interface
    interface = {"kserve": "kfserving"}.get(interface, interface)  # KFServing's name since 2021
    if interface not in interfaces:
        raise ConfigError(
            f"INTERFACE={interface!r} is not in this image; it has: {', '.join(interfaces)}"
        )
    body = interfaces[interface]
    protocols = body.protocols
    protocol = env.get("PROTOCOL") or defaults.get("PROTOCOL") or protocols[-1]
    if protocol not in protocols:
        if env.get("PROTOCOL") and env.get("PROTOCOL") != defaults.get("PROTOCOL"):
            raise ConfigError(
                f"PROTOCOL={protocol!r} is not built for {interface}; it has: "
                f"{', '.join(protocols)}"
            )
        protocol = protocols[-1]
    is_default = interface == document.default_interface
    limits = document.limits
    grpc_port = body.grpc_port
    if grpc_port and env.get("GRPC_PORT"):
        grpc_port = _port(env["GRPC_PORT"], "GRPC_PORT")
    return _checked(
        RuntimeConfig(
            interface=interface,
            protocol=protocol,
            port=_chosen_port(interface, body.port, env, defaults, is_default),
            grpc_port=grpc_port,
            model_name=env.get("MODEL_NAME") or document.name,
            model_version=document.version,
            model_dir=Path(env.get("OMI_MODEL_DIR", str(path.parent / "model"))),
            code_dir=Path(env.get("OMI_CODE_DIR", str(path.parent / "code"))),
            analysis_dir=path.parent / "analysis",
            raw=raw,
            document=document,
            env=env,
            protocols=protocols,
            # each worker holds its own model: more than a few per core only fills memory
            workers=_count(
                env,
                "OMI_WORKERS",
                limits.workers,
                minimum=1,
                maximum=4 * (os.cpu_count() or 1),
            ),
            max_body_bytes=_count(env, "OMI_MAX_BODY_BYTES", limits.max_body_bytes, minimum=1),
            max_batch_size=_count(env, "OMI_MAX_BATCH_SIZE", limits.max_batch_size, minimum=0),
            max_latency_ms=_millis(env, "OMI_MAX_LATENCY_MS", limits.max_latency_ms),
            verify=_flag(env, "OMI_VERIFY_MODEL", True),
            predict_threads=_count(env, "OMI_PREDICT_THREADS", 1, minimum=1, maximum=256),
            coalesce_rows=_count(env, "OMI_COALESCE_ROWS", 256, minimum=0),
            header_timeout=_seconds(env, "OMI_HEADER_TIMEOUT_S", 10.0),
            body_timeout=_seconds(env, "OMI_BODY_TIMEOUT_S", 60.0),
            max_connections=_count(env, "OMI_MAX_CONNECTIONS", 1000, minimum=1, maximum=100_000),
            access_log=_flag(env, "OMI_ACCESS_LOG", False),
            decode_process_bytes=_count(env, "OMI_DECODE_PROCESS_BYTES", 2 << 20, minimum=0),
        )
    )


def _count(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    value = env.get(name)
    if value is None or value == "":
        return int(default)
    if not value.isdigit() or int(value) < minimum:
        raise ConfigError(f"{name}={value!r} must be a whole number of at least {minimum}")
    if maximum is not None and int(value) > maximum:
        raise ConfigError(f"{name}={value} is more than {maximum}, the most this machine can use")
    return int(value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} must be one of 1/true/yes/on or 0/false/no/off")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise ConfigError(f"{name}={value!r} must be seconds between 0 and 3600")
    return seconds


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A URL path: Vertex's own predict route is /v1/endpoints/{endpoint}/deployedModels/{id}:predict
ROUTE = re.compile(r"^/[^\s?#]{0,1023}$")


def _checked(config: RuntimeConfig) -> RuntimeConfig:
    """What a route or a listener would trip over later, refused now in one line."""
    if not MODEL_NAME.match(config.model_name):
        raise ConfigError(
            f"MODEL_NAME={config.model_name!r} cannot appear in a route: use letters, digits, "
            "'.', '_' and '-' (at most 128)"
        )
    if (
        config.grpc_port is not None
        and config.grpc_port == config.port
        and "v2" in config.protocols
    ):
        raise ConfigError(f"the gRPC port and the HTTP port are both {config.port}: set GRPC_PORT")
    for name in ("AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE"):
        route = config.env.get(name)
        if config.interface == "vertex" and route and not ROUTE.match(route):
            raise ConfigError(f"{name}={route!r} must be a path that starts with /")
    return config


def _millis(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or value == "":
        return float(default)
    try:
        millis = float(value)
    except ValueError:
        millis = -1.0
    if not 0 <= millis <= 60_000:  # also rejects nan
        raise ConfigError(f"{name}={value!r} must be milliseconds between 0 and 60000")
    return millis
