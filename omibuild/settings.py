"""Machine and user settings that are not the manifest's to say: today, the base image a
manifest gets when it names none.

Looked up in order: ``OMIBUILD_BASE_IMAGE``; the file ``OMIBUILD_CONFIG`` names, else
``$XDG_CONFIG_HOME/omibuild/config.toml`` (``~/.config/...``); then ``/etc/omibuild/config.toml``
(`make setup` writes that one on an offline machine); else the official Python slim image."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from omibuild.errors import UsageError

# The official image for the Python the runtime is built and tested with.
PUBLIC_BASE_IMAGE = "python:3.11-slim"
SYSTEM_CONFIG = Path("/etc/omibuild/config.toml")
MAX_CONFIG_BYTES = 64 * 1024


def config_files(env: Mapping[str, str]) -> list[Path]:
    if env.get("OMIBUILD_CONFIG"):
        return [Path(env["OMIBUILD_CONFIG"])]
    home = env.get("XDG_CONFIG_HOME") or (
        str(Path(env["HOME"]) / ".config") if env.get("HOME") else None
    )
    user = [Path(home) / "omibuild" / "config.toml"] if home else []
    return [*user, SYSTEM_CONFIG]


def _read(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise UsageError(f"{path}: cannot read omibuild's config: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not an omibuild config")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{path}: not valid TOML: {err}", hint="fix or delete the file") from None


def default_base_image(env: Mapping[str, str]) -> str:
    if env.get("OMIBUILD_BASE_IMAGE"):
        return env["OMIBUILD_BASE_IMAGE"]
    for path in config_files(env):
        value = _read(path).get("base_image")
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{path}: base_image must be an image reference")
            return value.strip()
    return PUBLIC_BASE_IMAGE
