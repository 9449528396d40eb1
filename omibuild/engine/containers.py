"""Containers for `run` and `check`: start an image with the OMI variables, read its state
and logs, stop it. Like the executor, it reaches the engine through python-on-whales."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from omibuild.engine.images import docker_exe, engine_error


class Containers:
    """Starting and stopping containers for `run` and `check` (also python-on-whales), of
    ``platform``'s image where one is named (another architecture's runs under the kernel's
    registered emulator), else the engine's choice, the host's; with ``gpus``, given the
    GPUs docker's --gpus names."""

    def __init__(self, platform: str | None = None, gpus: str | None = None) -> None:
        from python_on_whales import DockerClient

        self.docker = DockerClient()
        self.platform = platform
        self.gpus = gpus  # docker's --gpus (all, 1, "device=0"): the NVIDIA toolkit's GPUs
        self.started: list[str] = []

    def image_config(self, ref: str) -> dict[str, Any] | None:
        from python_on_whales.exceptions import DockerException

        try:
            image = self.docker.image.inspect(ref)
        except DockerException as err:
            if "No such image" in str(err) or "not found" in str(err).lower():
                return None
            raise engine_error(err) from None
        cfg = image.config
        return {
            "id": str(image.id),
            "labels": dict(cfg.labels or {}),
            "user": cfg.user or "",
            "env": list(cfg.env or []),
            "entrypoint": list(cfg.entrypoint or []),
            "cmd": list(cfg.cmd or []),
            "repo_tags": list(image.repo_tags or []),
            "platform": "/".join(
                p for p in (image.os or "", image.architecture or "", image.variant or "") if p
            ),
        }

    def start(
        self, image: str, env: dict[str, str], ports: dict[int, int], *, read_only: bool = False
    ) -> str:
        from python_on_whales.exceptions import DockerException

        # named, so that a container the engine created but could not start (a network
        # error, a port taken) is removed too, not left behind in "Created"
        name = f"omibuild-{uuid.uuid4().hex[:12]}"
        try:
            container = self.docker.run(
                image,
                detach=True,
                name=name,
                envs=env,
                publish=[(host, cont) for cont, host in ports.items()],
                read_only=read_only,
                tmpfs=["/tmp"] if read_only else [],
                labels={"io.omibuild.started-by": "omibuild"},
                platform=self.platform,
                gpus=self.gpus,
            )
        except DockerException as err:
            with contextlib.suppress(DockerException):
                self.docker.container.remove(name, force=True)
            raise engine_error(err) from None
        cid = str(container.id)
        self.started.append(cid)
        return cid

    def running(self, cid: str) -> bool:
        from python_on_whales.exceptions import DockerException

        try:
            return bool(self.docker.container.inspect(cid).state.running)
        except DockerException:
            return False

    def exit_code(self, cid: str) -> int | None:
        state = self.docker.container.inspect(cid).state
        return None if state.running else int(state.exit_code or 0)

    def logs(self, cid: str, tail: int = 20) -> str:
        from python_on_whales.exceptions import DockerException

        try:
            return str(self.docker.container.logs(cid, tail=tail))
        except DockerException:
            return ""

    def exec(self, cid: str, command: list[str]) -> str:
        return str(self.docker.container.execute(cid, command))

    def read_text(self, cid: str, path: str) -> str | None:
        """A file of a running container, or None when it cannot be read."""
        from python_on_whales.exceptions import DockerException

        try:
            return self.exec(cid, ["cat", path])
        except DockerException:
            return None

    def copy_out(self, image: str, paths: list[str], dest: Path) -> bool:
        """Copy ``paths`` of ``image`` into ``dest`` from a container created, never started,
        and removed: False when the image or a path is not there."""
        from python_on_whales.exceptions import DockerException

        try:
            container = self.docker.container.create(
                image, entrypoint="/nonexistent", platform=self.platform
            )
        except DockerException:
            return False
        try:
            for path in paths:
                self.docker.copy((container.id, path), dest / Path(path).name)
            return True
        except DockerException:
            return False
        finally:
            with contextlib.suppress(DockerException):
                self.docker.container.remove(container.id, force=True)

    def file_head(self, image: str, path: str, size: int = 64) -> bytes | None:
        """The first ``size`` bytes of ``path`` in ``image``, its symbolic links followed (a
        container created, never started, and removed): None when it is not there."""
        from python_on_whales.exceptions import DockerException

        try:
            container = self.docker.container.create(
                image, entrypoint="/nonexistent", platform=self.platform
            )
        except DockerException:
            return None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                copied = subprocess.run(
                    [docker_exe(), "cp", "-L", f"{container.id}:{path}", f"{tmp}/file"],
                    capture_output=True, timeout=120, check=False,
                )  # fmt: skip
                if copied.returncode != 0:
                    return None
                with open(f"{tmp}/file", "rb") as fh:
                    return fh.read(size)
        except (OSError, subprocess.SubprocessError):
            return None
        finally:
            with contextlib.suppress(DockerException):
                self.docker.container.remove(container.id, force=True)

    def stop(self, cid: str, timeout: int = 20) -> int | None:
        """SIGTERM, wait up to ``timeout`` s; returns the exit code (None if it was killed)."""
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.container.stop(cid, time=timeout)
            return self.exit_code(cid)
        except DockerException:
            return None

    def remove_all(self) -> None:
        from python_on_whales.exceptions import DockerException

        for cid in self.started:
            with contextlib.suppress(DockerException):
                self.docker.container.remove(cid, force=True)
        self.started.clear()
