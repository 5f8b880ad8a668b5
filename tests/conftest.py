"""Fixtures for every test; shared helpers live in `support.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

# Checks the attack and legitimate markers, and prints the report of `make security`.
pytest_plugins = ["security_report"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state directory that does not exist yet."""
    return tmp_path / "state"
