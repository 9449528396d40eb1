"""Which packaging tools the image's venv can lose (runtime/slim.py): decided from the
requirements files and the installed distributions' metadata, as packaging reads them."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from omibuild.runtime.slim import removable_tools


def dist(root: Path, name: str, *requires: str) -> metadata.Distribution:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return metadata.PathDistribution(info)


@pytest.fixture
def tools(tmp_path: Path) -> list[metadata.Distribution]:
    return [dist(tmp_path / "site", n) for n in ("pip", "setuptools", "wheel")]


def reqs(tmp_path: Path, text: str) -> list[Path]:
    path = tmp_path / "model.txt"
    path.write_text(text)
    return [path]


def test_tools_nothing_asks_for_go(tmp_path: Path, tools: list) -> None:
    text = "# the model\n-r other.txt\n--index-url https://x\nnumpy>=1.24  # pinned\n./local-pkg\n"
    assert removable_tools(reqs(tmp_path, text), tools) == ["setuptools", "wheel", "pip"]


def test_a_requirement_or_an_installed_dependency_keeps_a_tool(tmp_path: Path, tools: list) -> None:
    assert removable_tools(reqs(tmp_path, "Setuptools>=60\n"), tools) == ["wheel", "pip"]
    needs = [*tools, dist(tmp_path / "a", "torch", "setuptools; python_version >= '3.8'")]
    assert removable_tools(reqs(tmp_path, "torch\n"), needs) == ["wheel", "pip"]


def test_a_marker_that_does_not_hold_here_asks_for_nothing(tmp_path: Path, tools: list) -> None:
    windows = [*tools, dist(tmp_path / "a", "pkg", "setuptools; sys_platform == 'win32'")]
    assert removable_tools(reqs(tmp_path, "pkg\n"), windows) == ["setuptools", "wheel", "pip"]


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        ("pkg\n", False),  # the extra was not asked for
        ("pkg[build-tools]\n", True),
        ("pkg[Build_Tools]\n", True),  # PEP 685: build-tools, Build_Tools and build.tools match
        ("PKG[build.tools]\n", True),
    ],
)
def test_a_dependency_behind_an_extra_counts_only_when_the_extra_is_asked_for(
    tmp_path: Path, tools: list, asked: str, kept: bool
) -> None:
    pkg = dist(tmp_path / "a", "pkg", 'wheel; extra == "build-tools"', "numpy")
    removable = removable_tools(reqs(tmp_path, asked), [*tools, pkg])
    assert ("wheel" not in removable) is kept
    assert "setuptools" in removable and "pip" in removable
