"""Which packaging tools the image's venv can lose (runtime/slim.py): decided from the
requirements files and the installed distributions' metadata, as packaging reads them."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from omibuild.runtime.slim import INSTALLED_FILE, record_installed, removable_tools


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


def test_the_venv_s_distributions_are_recorded_with_the_archive_hashes_pip_reported(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    for name in ("Scikit_Learn", "numpy", "setuptools"):
        dist(site, name)
    report = tmp_path / "report.json"
    wheel = "https://files.example/scikit_learn-1.0-py3-none-any.whl"
    report.write_text(json.dumps({"version": "1", "install": [
        {"metadata": {"name": "scikit-learn", "version": "1.0"},
         "download_info": {"url": wheel, "archive_info": {"hashes": {"sha256": "ab" * 32}}}},
        {"metadata": {"name": "numpy", "version": "1.0"}, "download_info": {"url": "file:///x"}},
        {"metadata": {"name": "gone", "version": "1"}},  # uninstalled since: not in the venv
    ]}))  # fmt: skip
    assert record_installed(venv, report) == 3
    recorded = json.loads((venv / INSTALLED_FILE).read_text())["distributions"]
    assert recorded == [
        {"name": "numpy", "version": "1.0", "url": "file:///x"},
        {"name": "Scikit_Learn", "version": "1.0", "url": wheel, "sha256": "ab" * 32},
        {"name": "setuptools", "version": "1.0"},  # in the venv before pip ran: no report
    ]
    assert record_installed(venv, tmp_path / "missing.json") == 3  # no report: names only
