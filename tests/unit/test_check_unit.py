"""check's platform finding: an image's binaries are built for the platform it declares."""

from __future__ import annotations

import pytest


def test_the_binaries_must_be_the_declared_platform_s() -> None:
    import sys

    from omibuild.conformance.check import binary_finding, elf_architecture

    with open(sys.executable, "rb") as fh:  # this machine's own interpreter
        head = fh.read(64)
    here = elf_architecture(head)
    assert here in ("amd64", "arm64")
    assert binary_finding(f"linux/{here}", "/py", head).ok
    other = "arm64" if here == "amd64" else "amd64"
    wrong = binary_finding(f"linux/{other}", "/py", head)
    assert not wrong.ok and wrong.detail == f"/py: {here}"
    aarch64 = bytearray(head)
    aarch64[18:20] = (0xB7).to_bytes(2, "little")
    assert elf_architecture(bytes(aarch64)) == "arm64"
    assert not binary_finding("linux/amd64", "/sh", b"#!/bin/sh\n" + bytes(20)).ok


def test_which_platform_runs_and_for_how_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index's platforms come from the engine's record, not `docker image inspect` (which
    named arm64 for an image `docker run` started as amd64); the host's runs by default; one
    the image lacks is refused in one line; an emulated one waits five times longer."""
    from omibuild.conformance import check
    from omibuild.engine.images import HOST_PLATFORM, readiness_timeout
    from omibuild.errors import UsageError

    other = "linux/arm64" if HOST_PLATFORM == "linux/amd64" else "linux/amd64"
    offered: tuple[str, ...] | None = (other, HOST_PLATFORM)

    class Engine:
        def image_platforms(self, ref: str) -> tuple[str, ...] | None:
            return offered

    monkeypatch.setattr(check, "EngineImages", Engine)
    inspected = {"platform": other}
    assert check._platforms("img", inspected, None) == (HOST_PLATFORM, [other, HOST_PLATFORM])
    assert check._platforms("img", inspected, other)[0] == other
    assert check._platforms("img", inspected, f"{other}/v8")[0] == f"{other}/v8"
    with pytest.raises(UsageError) as refused:
        check._platforms("img", inspected, "linux/s390x")
    assert str(refused.value).startswith(f"img offers {other}, {HOST_PLATFORM}, not linux/s390x")
    offered = None  # no containerd record: what inspect says, the one there is
    assert check._platforms("img", inspected, None) == (other, [other])
    assert readiness_timeout(None, None) == readiness_timeout(None, HOST_PLATFORM) == 60
    assert readiness_timeout(None, other) == 300 and readiness_timeout(7, other) == 7
