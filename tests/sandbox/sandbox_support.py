"""Helpers shared by the sandbox backend tests."""

from __future__ import annotations

from dataclasses import replace

from mcp_guard.sandbox.base import (
    CodeRun,
    Language,
    OutputCapture,
    RunOutcome,
    SandboxBackend,
    SandboxLimits,
    SandboxTag,
)

# Small limits so that bombs and loops end quickly in tests.
TEST_LIMITS = SandboxLimits(
    timeout_seconds=5.0,
    cpu_seconds=5,
    memory_bytes=256 * 1024 * 1024,
    max_processes=32,
    max_file_bytes=16 * 1024 * 1024,
    max_output_bytes=64 * 1024,
)


def limits(**changes: object) -> SandboxLimits:
    """Return the test limits with some fields changed."""
    return replace(TEST_LIMITS, **changes)  # type: ignore[arg-type]


async def run_once(
    backend: SandboxBackend,
    code: str,
    language: Language = "python",
    sandbox_limits: SandboxLimits = TEST_LIMITS,
) -> RunOutcome:
    """Run `code` in a fresh sandbox of `backend` and destroy the sandbox, as run_code does per call."""
    sandbox = await backend.create(sandbox_limits, SandboxTag(client="test", call_id="test-call"))
    try:
        return await sandbox.run(
            CodeRun(language=language, code=code), OutputCapture(sandbox_limits.max_output_bytes)
        )
    finally:
        await sandbox.aclose()
