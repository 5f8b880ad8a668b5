"""Secrets in arguments, results and errors never reach the database, its WAL or an export."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from mcp_guard.audit import AuditedCall, CallIntent, SqliteAuditStore
from mcp_guard.audit.cli import add_audit_commands, run_audit_command
from mcp_guard.errors import DownstreamProtocolError

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]

# Each canary contains a marker word that appears nowhere else, so finding the word in
# raw bytes means the secret leaked.
CANARIES = {
    "aws": "AKIACANARYAWSKEY0001",
    "github": "ghp_CanaryGithubToken0123456789abcdefgh",
    "github_pat": "github_pat_CanaryFineGrained_0123456789abcdef",
    "slack": "xoxb-1234567890-CanarySlackToken",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDYW5hcnkifQ.CanaryJwtSignature",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIICanaryPemBody\n-----END RSA PRIVATE KEY-----",
    "url": "https://deploy:CanaryUrlPassword@git.example.com/repo.git",
    "bearer": "Authorization: Bearer CanaryBearerToken",
}
MARKERS = [
    "AKIACANARYAWSKEY",
    "CanaryGithubToken",
    "CanaryFineGrained",
    "CanarySlackToken",
    "CanaryJwtSignature",
    "eyJzdWIiOiJDYW5hcnkifQ",
    "CanaryPemBody",
    "CanaryUrlPassword",
    "CanaryBearerToken",
    "CanaryNestedPassword",
    "CanaryApiKey",
    "CanaryClientSecret",
    "CanaryCookie",
]


def _arguments() -> dict[str, object]:
    return {
        "text": " and ".join(CANARIES.values()),
        "items": list(CANARIES.values()),
        "config": {"db": [{"host": "db", "password": "CanaryNestedPassword"}]},
        "apiKey": "CanaryApiKey",
        "Client-Secret": {"value": "CanaryClientSecret"},
        "headers": [{"Cookie": "session=CanaryCookie"}],
    }


def _leaks(data: bytes) -> list[str]:
    return [marker for marker in MARKERS if marker.encode() in data]


def _state_bytes(state_dir: Path) -> bytes:
    return b"".join((state_dir / name).read_bytes() for name in sorted(os.listdir(state_dir)))


@pytest.mark.attack("secret in audit trail or logs", attempts=len(MARKERS))
async def test_canaries_never_reach_database_wal_or_export(
    state_dir: Path,
    new_store: Callable[..., SqliteAuditStore],
    make_intent: IntentFactory,
    key: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_GUARD_AUDIT_KEY", key.hex())
    result_text = "result: " + " ".join(CANARIES.values())
    error_text = "downstream said " + " ".join(CANARIES.values())

    with structlog.testing.capture_logs() as events:
        async with new_store() as store:
            async with AuditedCall(store, make_intent(arguments=_arguments())) as call:
                call.finish("succeeded", preview=result_text, result_bytes=len(result_text))
            with pytest.raises(DownstreamProtocolError):
                async with AuditedCall(store, make_intent(arguments=_arguments())):
                    raise DownstreamProtocolError("files", error_text)
            # Read while open: the rows are still in the WAL, not yet checkpointed.
            wal = (state_dir / "audit.sqlite3-wal").read_bytes()
            while_open = _state_bytes(state_dir)
    after_close = _state_bytes(state_dir)
    export = await _export(state_dir)

    assert b"[REDACTED:" in wal
    assert _leaks(wal) == []
    assert _leaks(while_open) == []
    assert _leaks(after_close) == []
    assert "[REDACTED:github-token]" in export
    assert _leaks(export.encode()) == []
    assert _leaks(repr(events).encode()) == []


async def _export(state_dir: Path) -> str:
    parser = argparse.ArgumentParser()
    add_audit_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "export"])
    output = io.StringIO()
    status = await run_audit_command(args, state_dir, stdout=output)
    assert status == 0
    return output.getvalue()
