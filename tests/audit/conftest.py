"""Fixtures for the audit tests: a state directory, a key, open stores and record factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.audit import AuditPaths, CallIntent, CallOutcome, SqliteAuditStore, new_call_id

KEY = bytes(range(32))

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]


@pytest.fixture
def paths(state_dir: Path) -> AuditPaths:
    return AuditPaths.in_state_dir(state_dir)


@pytest.fixture
def key() -> bytes:
    return KEY


StoreFactory = Callable[..., SqliteAuditStore]


@pytest.fixture
def new_store(paths: AuditPaths) -> StoreFactory:
    """Return a factory of (unopened) stores on the test's files, with the test key by default."""

    def factory(key: bytes = KEY, **options: Any) -> SqliteAuditStore:
        return SqliteAuditStore(paths.database, key, paths.head, **options)

    return factory


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[SqliteAuditStore]:
    async with new_store() as opened:
        yield opened


@pytest.fixture
def make_intent() -> IntentFactory:
    def factory(call_id: str | None = None, **overrides: Any) -> CallIntent:
        values: dict[str, Any] = {
            "call_id": call_id or new_call_id(),
            "client": "alice",
            "organisation": "acme",
            "session": "session-1",
            "protocol_era": "2025-11-25",
            "server": "files",
            "tool": "read_file",
            "arguments": {"path": "/tmp/report.txt"},
            "decision": "auto",
            "rule": "allow-reads",
        }
        values.update(overrides)
        return CallIntent(**values)

    return factory


@pytest.fixture
def make_outcome() -> OutcomeFactory:
    def factory(call_id: str, **overrides: Any) -> CallOutcome:
        values: dict[str, Any] = {
            "call_id": call_id,
            "outcome": "succeeded",
            "latency_ms": 12.5,
            "result_bytes": 42,
            "preview": "report contents",
        }
        values.update(overrides)
        return CallOutcome(**values)

    return factory
