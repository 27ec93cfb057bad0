"""Fixtures; the helpers themselves are in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_mnist


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")
