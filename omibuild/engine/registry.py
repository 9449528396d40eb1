"""Pushing an assembled image straight to a registry (the OCI distribution API), without
the engine: each blob the registry lacks is uploaded (three at once), model layers streamed
from the model files, everything else from the image layout; then each platform's manifest
by digest and the index by every tag.

Hand-written on the standard library's http.client: the OCI registry clients on PyPI read a
blob into memory before uploading it (oras-py's ``put_upload`` does, measured in #19), which a
10 GiB layer cannot afford; skopeo and crane are not Python packages. Credentials are read
as Docker reads them (``$DOCKER_CONFIG/config.json``: ``auths``, ``credsStore``,
``credHelpers``) and answered to the registry's Basic or Bearer challenge; they stay in this
process's memory."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

from omibuild.store.hashing import SideHash

TIMEOUT = 120.0  # seconds for any one socket operation
UPLOADS_AT_ONCE = 3  # as the Docker engine pushes


class RegistryError(Exception):
    """A push the registry refused or could not take; ``status`` is its HTTP status, 0 when
    it could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str = field(repr=False)


def split_reference(ref: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of ``host/path:tag``, as Docker reads a name."""
    name, _, tag = ref.rpartition(":")
    if "/" in tag or not name:
        name, tag = ref, "latest"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    path = name if "/" in name else f"library/{name}"
    return "registry-1.docker.io", path, tag


def insecure(host: str) -> bool:
    """Plain HTTP, as Docker allows by default: loopback registries only."""
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 else host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def credentials(host: str) -> Credentials | None:
    """What ``docker login`` stored for ``host``: a credential helper's answer, or the
    config's own ``auth``."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == "registry-1.docker.io":  # how `docker login` records Docker Hub
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    helper = next(
        (config.get("credHelpers", {}).get(k) for k in keys if k in config.get("credHelpers", {})),
        config.get("credsStore"),
    )
    hub = host == "registry-1.docker.io"
    if helper:  # helpers know Docker Hub by its legacy index address
        found = _from_helper(str(helper), "https://index.docker.io/v1/" if hub else keys[1])
        if found:
            return found
    for key in keys:
        entry = config.get("auths", {}).get(key) or {}
        if entry.get("auth"):
            with contextlib.suppress(ValueError):
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
                return Credentials(user, secret)
    return None


def _from_helper(helper: str, server: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "get"], input=server, capture_output=True, text=True, timeout=30, check=False
        )
        answer = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not isinstance(answer, dict) or not answer.get("Secret"):
        return None
    return Credentials(str(answer.get("Username") or ""), str(answer["Secret"]))


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` → ("bearer", {realm, service, ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in _split_params(rest):
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return scheme.lower(), params


def _split_params(text: str) -> Iterator[str]:
    """Comma-separated, commas inside quotes kept (a scope may hold several actions)."""
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            yield "".join(current)
            current = []
        else:
            current.append(ch)
    if current:
        yield "".join(current)


class Client:
    """One repository of one registry."""

    def __init__(self, host: str, repository: str) -> None:
        self.host = host
        self.repository = repository
        self.secure = not insecure(host)
        self.creds = credentials(host)
        self.authorization: str | None = None
        self.context = ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
        )

    # -- HTTP ------------------------------------------------------------------------------
    def _connection(self, netloc: str, secure: bool) -> http.client.HTTPConnection:
        if secure:
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=self.context)
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT)

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Iterator[bytes]] | None = None,
        length: int | None = None,
        retry_auth: bool = True,
        limit: int = 1 << 20,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """(status, headers, body read up to ``limit`` bytes) of one request; ``target`` is a
        path on the registry or an absolute URL it gave (an upload's Location, a redirect)."""
        url = urllib.parse.urlsplit(target)
        netloc = url.netloc or self.host
        secure = (url.scheme == "https") if url.scheme else self.secure
        path = urllib.parse.urlunsplit(("", "", url.path, url.query, ""))
        sent = {"User-Agent": "omibuild", **(headers or {})}
        if self.authorization and netloc == self.host:
            sent["Authorization"] = self.authorization
        if body is not None:
            sent["Content-Length"] = str(len(body) if isinstance(body, bytes) else length)
        conn = self._connection(netloc, secure)
        try:
            payload = body if isinstance(body, bytes) or body is None else body()
            conn.request(method, path, body=payload, headers=sent)
            resp = conn.getresponse()
            data = resp.read(limit)
        except (OSError, http.client.HTTPException) as err:
            raise RegistryError(
                f"the registry {self.host} is unreachable ({err.__class__.__name__}: {err})"
            ) from None
        finally:
            conn.close()
        if resp.status == 401 and retry_auth and self._authenticate(resp.headers):
            return self.request(
                method, target, headers=headers, body=body, length=length, retry_auth=False,
                limit=limit,
            )  # fmt: skip
        return resp.status, resp.headers, data

    def _authenticate(self, headers: http.client.HTTPMessage) -> bool:
        """Answer the registry's challenge; False when there is nothing to answer with."""
        scheme, params = _challenge(headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.creds is None:
                return False
            pair = f"{self.creds.username}:{self.creds.secret}".encode()
            self.authorization = "Basic " + base64.b64encode(pair).decode()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        scope = params.get("scope") or f"repository:{self.repository}:pull,push"
        query = urllib.parse.urlencode(
            {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        )
        realm = urllib.parse.urlsplit(params["realm"])
        conn = self._connection(realm.netloc, realm.scheme == "https")
        head = {"User-Agent": "omibuild"}
        if self.creds is not None:
            pair = f"{self.creds.username}:{self.creds.secret}".encode()
            head["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        try:
            conn.request("GET", f"{realm.path or '/'}?{query}", headers=head)
            resp = conn.getresponse()
            answer = json.loads(resp.read(1 << 20)) if resp.status == 200 else {}
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()
        token = (
            answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        )
        if not token:
            return False
        self.authorization = f"Bearer {token}"
        return True

    def _refused(self, what: str, status: int, data: bytes) -> RegistryError:
        try:
            errors = json.loads(data).get("errors") or []
            said = "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3])
        except (ValueError, AttributeError):
            said = ""
        reason = said or http.client.responses.get(status, "error")
        return RegistryError(f"{what}: {status} {reason}"[:300], status)

    # -- the API -----------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        status, _, data = self.request("HEAD", f"/v2/{self.repository}/blobs/{digest}")
        if status in (401, 403):
            raise self._refused(f"reading {self.repository}", status, data)
        return status == 200

    def mount(self, digest: str, source: str) -> bool:
        """Ask the registry to link a blob it holds for another repository: no bytes move."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        status, _, _ = self.request("POST", f"/v2/{self.repository}/blobs/uploads/?{query}")
        return status == 201

    def upload(self, digest: str, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        status, headers, data = self.request("POST", f"/v2/{self.repository}/blobs/uploads/")
        if status != 202 or not headers.get("Location"):
            raise self._refused(f"pushing to {self.repository}", status, data)
        location = headers["Location"]
        sep = "&" if "?" in location else "?"
        target = f"{location}{sep}{urllib.parse.urlencode({'digest': digest})}"
        status, _, data = self.request(
            "PUT",
            target,
            headers={"Content-Type": "application/octet-stream"},
            body=chunks,
            length=size,
        )
        if status != 201:
            raise self._refused(f"uploading {digest[:19]}… to {self.repository}", status, data)

    def upload_hashing(self, size: int, chunks: Iterator[bytes]) -> str:
        """Upload ``size`` bytes whose digest is not known yet: streamed in one PATCH while
        they are hashed, the digest given when the upload is closed. Returns it."""
        status, headers, data = self.request("POST", f"/v2/{self.repository}/blobs/uploads/")
        if status != 202 or not headers.get("Location"):
            raise self._refused(f"pushing to {self.repository}", status, data)
        with SideHash() as digest:  # hashed on a second thread while the last chunk is sent
            status, headers, data = self.request(
                "PATCH",
                headers["Location"],
                headers={"Content-Type": "application/octet-stream"},
                body=lambda: digest.through(chunks),
                length=size,
            )
            if status != 202 or not headers.get("Location"):
                raise self._refused(f"uploading to {self.repository}", status, data)
            done = f"sha256:{digest.hexdigest()}"
        location = headers["Location"]
        sep = "&" if "?" in location else "?"
        status, _, data = self.request(
            "PUT", f"{location}{sep}{urllib.parse.urlencode({'digest': done})}", body=b""
        )
        if status != 201:
            raise self._refused(f"uploading {done[:19]}… to {self.repository}", status, data)
        return done

    def get(self, target: str, limit: int, accept: str = "") -> bytes:
        """A manifest or blob, following the registry's redirects (blob storage), refused
        when larger than ``limit``."""
        headers = {"Accept": accept} if accept else {}
        for _ in range(4):
            status, got, data = self.request("GET", target, headers=headers, limit=limit + 1)
            if status in (301, 302, 303, 307, 308) and got.get("Location"):
                target = got["Location"]
                continue
            if status != 200:
                raise self._refused(f"reading {self.repository}", status, data)
            if len(data) > limit:
                raise RegistryError(f"reading {self.repository}: over {limit} bytes")
            return data
        raise RegistryError(f"reading {self.repository}: too many redirects")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        status, _, said = self.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{reference}",
            headers={"Content-Type": media_type},
            body=data,
        )
        if status != 201:
            raise self._refused(f"writing {self.repository}:{reference}", status, said)


@dataclass
class Pushed:
    """What a push moved: blobs uploaded (their digests and bytes), mounted or already there."""

    uploaded: set[str] = field(default_factory=set)
    uploaded_bytes: int = 0
    mounted: int = 0
    present: int = 0


def push(
    refs: tuple[str, ...],
    blobs: list[tuple[str, int, Callable[[], Iterator[bytes]]]],
    manifests: list[tuple[str, bytes, str]],
    top: tuple[str, bytes, str],
    *,
    mount_from: dict[str, list[str]] | None = None,
    also: dict[str, str] | None = None,
) -> Pushed:
    """Push one image to every ref (each repository gets the blobs it lacks, then the
    manifests by digest, then the top by each tag). ``blobs``: (digest, size, chunks);
    ``manifests``: (digest, bytes, media type), children before parents; ``mount_from``:
    repositories (``host/path``) known to hold a blob, which a registry can link it from;
    ``also``: more tags (full refs, in the same repositories), each for one of ``manifests``
    (its digest), put after the top's."""
    by_digest = {digest: (data, media) for digest, data, media in manifests}
    done = Pushed()
    by_repo: dict[tuple[str, str], list[str]] = {}
    for ref in refs:
        host, repository, tag = split_reference(ref)
        by_repo.setdefault((host, repository), []).append(tag)
    for (host, repository), tags in by_repo.items():
        client = Client(host, repository)

        def one(
            blob: tuple[str, int, Callable[[], Iterator[bytes]]], client: Client = client
        ) -> str:
            digest, size, chunks = blob
            if client.has_blob(digest):
                return "present"
            for where in (mount_from or {}).get(digest, []):
                host, _, source = where.partition("/")
                same_registry = host == client.host and source != client.repository
                if same_registry and client.mount(digest, source):
                    return "mounted"
            client.upload(digest, size, chunks)
            return "uploaded"

        with futures.ThreadPoolExecutor(max_workers=UPLOADS_AT_ONCE) as pool:
            results = list(pool.map(one, blobs))
        for (digest, size, _), how in zip(blobs, results, strict=True):
            if how == "uploaded":
                done.uploaded.add(digest)
                done.uploaded_bytes += size
            elif how == "mounted":
                done.mounted += 1
            else:
                done.present += 1
        for digest, data, media in manifests:
            client.put_manifest(digest, data, media)
        for tag in tags:
            client.put_manifest(tag, top[1], top[2])
        for ref, digest in (also or {}).items():
            if split_reference(ref)[:2] == (host, repository):
                client.put_manifest(split_reference(ref)[2], *by_digest[digest])
    return done


MANIFESTS = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def read_image_file(ref: str, path: str, limit: int) -> bytes:
    """One file of an image in a registry, found by the build step that wrote it (its config
    history names the path) and read from that one layer: no other layer is fetched."""
    host, repository, tag = split_reference(ref)
    client = Client(host, repository)
    manifest = json.loads(client.get(f"/v2/{repository}/manifests/{tag}", 4 << 20, MANIFESTS))
    if "manifests" in manifest:  # an index: the first image (attestations say unknown/unknown)
        first = next(
            m for m in manifest["manifests"]
            if (m.get("platform") or {}).get("architecture") not in (None, "unknown")
        )  # fmt: skip
        manifest = json.loads(
            client.get(f"/v2/{repository}/manifests/{first['digest']}", 4 << 20, MANIFESTS)
        )
    config = json.loads(
        client.get(f"/v2/{repository}/blobs/{manifest['config']['digest']}", 8 << 20)
    )
    made = [h for h in config.get("history") or [] if not h.get("empty_layer")]
    for entry, layer in zip(made, manifest.get("layers") or [], strict=False):
        if path in str(entry.get("created_by", "")):
            blob = client.get(f"/v2/{repository}/blobs/{layer['digest']}", limit)
            return file_in_layer(blob, path, limit)
    raise RegistryError(f"{ref}: no layer of the image holds {path}")


def file_in_layer(blob: bytes, path: str, limit: int) -> bytes:
    """``path`` from a layer's tar (gzip'd or not), inflated no further than ``limit`` and a
    tar's headers past it."""
    data = blob
    if blob[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = inflate.decompress(blob, limit + (1 << 20))
        if inflate.unconsumed_tail:
            raise RegistryError(f"{path}: its layer inflates past {limit} bytes")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.getmember(path.lstrip("/"))
        if member.size > limit:
            raise RegistryError(f"{path}: over {limit} bytes")
        handle = archive.extractfile(member)
        if handle is None:
            raise RegistryError(f"{path}: not a file in its layer")
        return handle.read()
