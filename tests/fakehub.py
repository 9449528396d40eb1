"""A loopback server speaking the part of the Hugging Face Hub HTTP API that
huggingface_hub uses to resolve a revision and download files. Tests create repositories in
it; it counts the bytes it serves, and can serve slowly (to interrupt a download)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    gated: bool = False
    renamed_to: str | None = None

    def commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        sha = hashlib.sha1(
            json.dumps(
                sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())
            ).encode()
            + str(len(self.commits)).encode()
        ).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[ref] = sha
        return sha


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.bytes_served = 0
        self.requests: list[str] = []
        self.slow_bytes_per_second: int | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"hub": self})


class _Handler(BaseHTTPRequestHandler):
    """The Hub's API and file routes, for the hub of its subclass."""

    hub: FakeHub

    def log_message(self, *args: object) -> None:
        pass

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _find(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        if repo.gated and self.headers.get("Authorization") != "Bearer hf_granted":
            self._error(401, "GatedRepo")
            return None
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        if sha is None:
            self._error(404, "RevisionNotFound")
            return None
        return repo, sha

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and "revision" in parts:
            i = parts.index("revision")
            repo_id, rev = "/".join(parts[2:i]), "/".join(parts[i + 1 :])
            found = self._find(repo_id, rev)
            if found:
                self._info(repo_id, *found)
            return
        if "resolve" in parts:
            i = parts.index("resolve")
            repo_id, rev, name = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2 :])
            found = self._find(repo_id, rev)
            if found:
                self._file(found[0], found[1], name, body)
            return
        self._error(404, "RepoNotFound")

    def _info(self, repo_id: str, repo: Repo, sha: str) -> None:
        files = repo.commits[sha]
        siblings = []
        for name, data in sorted(files.items()):
            entry: dict[str, object] = {
                "rfilename": name,
                "size": len(data),
                "blobId": hashlib.sha1(data).hexdigest(),
            }
            if len(data) > 1024:  # large files live in LFS, with their sha256
                entry["lfs"] = {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 134,
                }
            siblings.append(entry)
        info = {
            "id": repo.renamed_to or repo_id,
            "modelId": repo.renamed_to or repo_id,
            "sha": sha,
            "siblings": siblings,
            "private": False,
            "cardData": {"license": repo.license} if repo.license else {},
        }
        data = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, repo: Repo, sha: str, name: str, body: bool) -> None:
        data = repo.commits[sha].get(name)
        if data is None:
            self._error(404, "EntryNotFound")
            return
        etag = (
            hashlib.sha256(data).hexdigest() if len(data) > 1024 else hashlib.sha1(data).hexdigest()
        )
        self.send_response(200)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not body:
            return
        chunk = 64 * 1024
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            try:
                self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                return
            self.hub.bytes_served += len(piece)
            if self.hub.slow_bytes_per_second:
                time.sleep(len(piece) / self.hub.slow_bytes_per_second)
