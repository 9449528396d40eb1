"""Machine and user settings that are not the manifest's to say: the base image a manifest
gets when it names none, and the host's pip settings that a build's pip step may use.

Looked up in order: ``OMIBUILD_BASE_IMAGE``; the file ``OMIBUILD_CONFIG`` names, else
``$XDG_CONFIG_HOME/omibuild/config.toml`` (``~/.config/...``); then ``/etc/omibuild/config.toml``
(`make setup` writes that one on an offline machine); else the official Python slim image."""

from __future__ import annotations

import configparser
import contextlib
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from omibuild.errors import UsageError
from omibuild.units import parse_size

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


# What omibuild's own cache directories may weigh after an apply (a laptop's share of its
# disk); the engine's build cache is the engine's to bound (its garbage collector).
DEFAULT_CACHE_MAX = "10GB"


def cache_max(env: Mapping[str, str]) -> int:
    """The cap an apply prunes omibuild's cache to: ``OMIBUILD_CACHE_MAX``, else ``cache_max``
    in the config file, else 10 GB."""
    where, text = "OMIBUILD_CACHE_MAX", env.get("OMIBUILD_CACHE_MAX")
    for path in [] if text else config_files(env):
        value = _read(path).get("cache_max")
        if value is not None:
            where, text = f"{path}: cache_max", str(value)
            break
    try:
        return parse_size(text or DEFAULT_CACHE_MAX)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None


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


# pip settings that name host files: meaningless (or harmful) inside the build.
_HOST_PATH_KEYS = {
    "cert",
    "client-cert",
    "constraint",
    "constraints",
    "requirement",
    "requirements",
    "build-constraint",
    "log",
    "cache-dir",
    "target",
    "prefix",
    "root",
    "src",
    "find-links",
}
_ENV_SETTINGS = {
    "PIP_INDEX_URL": "index-url",
    "PIP_EXTRA_INDEX_URL": "extra-index-url",
    "PIP_TRUSTED_HOST": "trusted-host",
    "PIP_DEFAULT_TIMEOUT": "timeout",
}


def pip_config_files(env: Mapping[str, str]) -> list[Path]:
    home = Path(env.get("HOME", str(Path.home())))
    xdg = Path(env.get("XDG_CONFIG_HOME", str(home / ".config")))
    candidates = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        home / ".pip" / "pip.conf",
        xdg / "pip" / "pip.conf",
    ]
    if env.get("PIP_CONFIG_FILE"):
        candidates.append(Path(env["PIP_CONFIG_FILE"]))
    return [p for p in candidates if p.is_file()]


def _put(out: configparser.ConfigParser, section: str, key: str, value: str) -> None:
    """Set a pip setting, less the index URLs that name this host's files (``file:``): inside
    the build they name nothing, and pip warns about each one for every package."""
    if key in ("index-url", "extra-index-url"):
        value = " ".join(u for u in value.split() if not u.lower().startswith("file:"))
        if not value:
            return
    if not out.has_section(section):
        out.add_section(section)
    out.set(section, key, value)


def portable_pip_config(env: Mapping[str, str]) -> str | None:
    """The host's pip settings that make sense inside a build (index URLs, timeouts)."""
    merged = configparser.ConfigParser(interpolation=None)
    for path in pip_config_files(env):
        with contextlib.suppress(configparser.Error, OSError, UnicodeDecodeError):
            merged.read(path, encoding="utf-8")
    out = configparser.ConfigParser(interpolation=None)
    for section in merged.sections():
        for key, value in merged.items(section):
            if key in _HOST_PATH_KEYS:
                continue
            _put(out, section, key, value)
    for var, key in _ENV_SETTINGS.items():
        if env.get(var):
            _put(out, "global", key, env[var])
    if not out.sections():
        return None
    lines = []
    for section in out.sections():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in out.items(section)]
    return "\n".join(lines) + "\n"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine: an index there is reached from a build step only
    on the host's network."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def host_index_urls(env: Mapping[str, str]) -> list[str]:
    """The index URLs the host's pip settings give a build (``portable_pip_config``)."""
    text = portable_pip_config(env)
    if text is None:
        return []
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(text)
    return [
        url
        for section in parsed.sections()
        for key in ("index-url", "extra-index-url")
        for url in parsed.get(section, key, fallback="").split()
    ]


def any_loopback(urls: Iterable[str]) -> bool:
    return any(is_loopback(u) for u in urls)
