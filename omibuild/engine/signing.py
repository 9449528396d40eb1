"""Signing and verifying pushed images with cosign (found on PATH; `make setup` installs it
from Debian), with a key of the user's own and no transparency log: `apply --sign KEY` signs
the pushed index and attaches each image manifest's provenance and SBOM as signed
statements; `check --verify KEY.pub` checks the signature, the signed statements, and that
every statement in the index names a manifest the index holds. The key's password, if any,
reaches cosign only through the user's own COSIGN_PASSWORD; nothing is written but each
predicate, into a private temporary directory that goes when cosign has read it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from omibuild.engine.attest import PROVENANCE, SPDX, Statement
from omibuild.engine.oci import ATTESTS
from omibuild.engine.registry import MANIFESTS, Client, RegistryError, insecure, split_reference

COSIGN_HINT = "install cosign 2 (Debian trixie: apt install cosign; or its release binary)"
# cosign's names for the predicate types omibuild attaches
COSIGN_TYPES = {PROVENANCE: "slsaprovenance1", SPDX: "spdxjson"}  # cosign's names for them
TIMEOUT = 300


class SigningError(Exception):
    """cosign refused to sign or verify: the message is its last line."""


class CosignMissing(SigningError):
    """cosign is not on PATH."""


def _cosign() -> str:
    found = shutil.which("cosign")
    if found is None:
        raise CosignMissing("cosign is not on PATH")
    return found


def _registry_flags(ref: str) -> list[str]:
    """A registry on this machine's loopback speaks plain HTTP, as the engine allows it."""
    plain = insecure(split_reference(ref)[0])
    return ["--allow-http-registry", "--allow-insecure-registry"] if plain else []


def _run(args: list[str]) -> str:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        said = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise SigningError((said or ["cosign failed"])[-1].removeprefix("Error: ")[:400])
    return proc.stdout


def sign(key: Path, repository: str, top: str, statements: list[Statement]) -> None:
    """Sign ``repository@top`` and attach each statement, signed, to the manifest it names."""
    cosign = _cosign()
    ref = f"{repository}@{top}"
    flags = ["--key", str(key), "--tlog-upload=false", "--yes", *_registry_flags(ref)]
    _run([cosign, "sign", *flags, ref])
    with tempfile.TemporaryDirectory(prefix="omibuild-attest-") as tmp:
        for n, st in enumerate(statements):
            predicate = Path(tmp) / f"predicate-{n}.json"
            predicate.write_text(json.dumps(st.predicate), "utf-8")
            kind = COSIGN_TYPES.get(st.predicate_type, st.predicate_type)
            target = f"{repository}@{st.subject}"
            _run([cosign, "attest", *flags, "--type", kind, "--predicate", str(predicate), target])


def verify(pub: Path, ref: str) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for the signature of ``ref``, every statement its index holds (each
    names a manifest of the index) and cosign's check of each signed statement."""
    cosign = _cosign()
    flags = ["--key", str(pub), "--insecure-ignore-tlog", *_registry_flags(ref)]
    host, repository, tag = split_reference(ref)
    client = Client(host, repository)
    try:
        raw = client.get(f"/v2/{repository}/manifests/{tag}", 4 << 20, MANIFESTS)
    except RegistryError as err:
        return [("the image is in its registry", False, str(err))]
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    found: list[tuple[str, bool, str]] = []
    try:
        _run([cosign, "verify", *flags, f"{host}/{repository}@{digest}"])
        found.append(("signature (cosign verify)", True, f"signed: {digest}"))
    except SigningError as err:
        found.append(("signature (cosign verify)", False, str(err)))
    images: set[str] = set()
    named: list[str] = []
    stale: list[str] = []
    unreadable: list[str] = []
    for m in json.loads(raw).get("manifests") or []:
        subject = (m.get("annotations") or {}).get(ATTESTS)
        if not subject:
            images.add(m["digest"])
            continue
        named.append(subject)
        try:  # the statements themselves: each subject is the manifest the index says
            manifest = json.loads(client.get(f"/v2/{repository}/manifests/{m['digest']}",
                                             4 << 20, MANIFESTS))  # fmt: skip
            for layer in manifest.get("layers") or []:
                statement = json.loads(client.get(f"/v2/{repository}/blobs/{layer['digest']}",
                                                  16 << 20))  # fmt: skip
                digests = [s.get("digest", {}).get("sha256") for s in statement["subject"]]
                if digests != [subject.removeprefix("sha256:")]:
                    stale.append(f"sha256:{digests[0] if digests else '?'}")
        except (RegistryError, ValueError, KeyError, TypeError, AttributeError) as err:
            unreadable.append(f"{m['digest'][:19]}… ({str(err)[:120]})")
    stale += [d for d in named if d not in images]
    found.append(
        (
            "every attestation names a manifest of this image",
            bool(named) and not stale and not unreadable,
            f"cannot read attestation manifest {unreadable[0]}" if unreadable else
            f"names {stale[0][:19]}…, not in the index" if stale else
            f"{len(named)} attestation manifests" if named else "none in the index",
        )
    )  # fmt: skip
    for image in sorted(images):
        for kind in COSIGN_TYPES.values():
            what = f"signed {kind} of {image[:19]}… (cosign verify-attestation)"
            try:
                _run([cosign, "verify-attestation", *flags, "--type", kind,
                      f"{host}/{repository}@{image}"])  # fmt: skip
                found.append((what, True, "verified"))
            except SigningError as err:
                found.append((what, False, str(err)))
    return found


__all__ = ["COSIGN_HINT", "CosignMissing", "SigningError", "sign", "verify"]
