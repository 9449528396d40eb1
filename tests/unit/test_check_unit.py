"""check's platform finding: an image's binaries are built for the platform it declares."""

from __future__ import annotations


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
