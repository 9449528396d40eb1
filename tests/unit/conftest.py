"""Unit tests plan without asking pip what the venv weighs (planning/weight.py runs pip and asks
the index: an integration test proves it, tests/integration/test_formats.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_weighing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMIBUILD_WEIGH", "0")
