"""Secrets for a build: the host's CA bundle and pip configuration, plus the manifest's own.

They reach BuildKit only as ``--secret`` (never build args, ENV, labels or layers): files
the host already keeps by their path, values (an environment variable the manifest names,
the pip configuration omibuild derives, which may hold an index password) through the
buildx process's environment. No value is written to disk, so a build killed with SIGKILL
leaves none behind, and none appears on a command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from omibuild.engine.request import BuildSecret
from omibuild.errors import UsageError
from omibuild.manifest.model import Secret
from omibuild.settings import portable_pip_config

CA_VARS = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


def find_ca_bundle(env: Mapping[str, str]) -> Path | None:
    for var in CA_VARS:
        value = env.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


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
