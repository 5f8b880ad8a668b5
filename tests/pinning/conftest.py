"""Fixtures for the pinning tests: a state directory, open pin stores and tool definitions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.pinning import PinStore

ToolFactory = Callable[..., dict[str, Any]]


@pytest.fixture
async def store(state_dir: Path) -> AsyncIterator[PinStore]:
    async with PinStore.in_state_dir(state_dir) as opened:
        yield opened


@pytest.fixture
def make_tool() -> ToolFactory:
    """Return a factory of wire tool definitions; keyword arguments replace fields."""

    def factory(name: str = "read_file", **fields: Any) -> dict[str, Any]:
        tool: dict[str, Any] = {
            "name": name,
            "title": "Read file",
            "description": "Read a file from the allowed directories.",
            "inputSchema": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "Path of the file."}},
                "required": ["path"],
            },
            "annotations": {"readOnlyHint": True},
        }
        tool.update(fields)
        return tool

    return factory
