"""Secrets for a build: the host's CA bundle and pip configuration, plus the manifest's own.

They reach BuildKit only as ``--secret id=...,src=FILE`` (never build args, ENV, labels or
layers). Values from environment variables are written to 0600 files in a private temporary
directory that is removed after the build, so they never appear on a command line."""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

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
            if not out.has_section(section):
                out.add_section(section)
            out.set(section, key, value)
    for var, key in _ENV_SETTINGS.items():
        if env.get(var):
            if not out.has_section("global"):
                out.add_section("global")
            out.set("global", key, env[var])
    if not out.sections():
        return None
    lines = []
    for section in out.sections():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in out.items(section)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def build_secrets(
    declared: tuple[Secret, ...], env: Mapping[str, str] | None = None
) -> Iterator[tuple[tuple[str, Path], ...]]:
    env = os.environ if env is None else env
    tmp = Path(tempfile.mkdtemp(prefix="omibuild-secrets-"))
    os.chmod(tmp, 0o700)
    try:
        found: list[tuple[str, Path]] = []
        ca = find_ca_bundle(env)
        if ca:
            found.append(("ca", ca))
        pipconf = portable_pip_config(env)
        if pipconf:
            found.append(("pipconf", _write(tmp / "pipconf", pipconf)))
        for s in declared:
            if s.env:
                if s.env not in env:
                    raise UsageError(
                        f"build secret {s.id!r}: environment variable {s.env} is not set",
                        hint=f"export {s.env} or remove the secret from build.secrets",
                    )
                found.append((s.id, _write(tmp / s.id, env[s.env])))
            elif s.file:
                path = Path(os.path.expanduser(s.file))
                if not path.is_file():
                    raise UsageError(f"build secret {s.id!r}: {path} is not a file")
                found.append((s.id, path))
        yield tuple(found)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
