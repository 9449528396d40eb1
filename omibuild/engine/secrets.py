"""Secrets for a build: the host's CA bundle and pip configuration, plus the manifest's own.

They reach BuildKit only as ``--secret`` (never build args, ENV, labels or layers): files
the host already keeps by their path, values (an environment variable the manifest names,
the pip configuration omibuild derives, which may hold an index password) through the
buildx process's environment. No value is written to disk, so a build killed with SIGKILL
leaves none behind, and none appears on a command line."""

from __future__ import annotations

import configparser
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from omibuild.engine.request import BuildSecret
from omibuild.errors import UsageError
from omibuild.manifest.model import Secret

CA_VARS = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
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


def find_ca_bundle(env: Mapping[str, str]) -> Path | None:
    for var in CA_VARS:
        value = env.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


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


def build_secrets(
    declared: tuple[Secret, ...], env: Mapping[str, str] | None = None
) -> tuple[BuildSecret, ...]:
    env = os.environ if env is None else env
    found: list[BuildSecret] = []
    ca = find_ca_bundle(env)
    if ca:
        found.append(BuildSecret("ca", file=ca))
    pipconf = portable_pip_config(env)
    if pipconf:
        found.append(BuildSecret("pipconf", value=pipconf))
    for s in declared:
        if s.env:
            if s.env not in env:
                raise UsageError(
                    f"build secret {s.id!r}: environment variable {s.env} is not set",
                    hint=f"export {s.env} or remove the secret from build.secrets",
                )
            found.append(BuildSecret(s.id, value=env[s.env]))
        elif s.file:
            path = Path(os.path.expanduser(s.file))
            if not path.is_file():
                raise UsageError(f"build secret {s.id!r}: {path} is not a file")
            found.append(BuildSecret(s.id, file=path))
    return tuple(found)
