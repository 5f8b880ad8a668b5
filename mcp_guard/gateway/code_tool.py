"""The run_code tool on the call path: the last stage of a run_code call, where others forward.

By the time a call gets here it has passed the same policy, limits, approval and
audit as any downstream tool. This module checks its arguments, runs it through
the `CodeRunner`, records the sandbox time it used for cost limits, and turns
the outcome or a sandbox failure into the tool result.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog

from mcp_guard.config.sandbox import SANDBOX_SERVER_ID, SandboxSettings
from mcp_guard.downstream.catalog import ExportedTool, export_builtin_tool
from mcp_guard.errors import SandboxError
from mcp_guard.gateway.pipeline import ToolCall, ToolResult, tool_error
from mcp_guard.sandbox import open_backend
from mcp_guard.sandbox.base import RunOutcome, SandboxTag
from mcp_guard.sandbox.runner import CodeRunner
from mcp_guard.sandbox.tool import CodeArgumentError, parse_arguments, render_outcome, tool_definition

log = structlog.get_logger(module=__name__)


class CodeTool:
    """The gateway's own run_code tool, backed by a `CodeRunner`."""

    def __init__(self, runner: CodeRunner) -> None:
        self.runner = runner
        self._watched: set[tuple[str, str]] = set()
        self.settings = runner.settings
        self.exported: ExportedTool = export_builtin_tool(
            SANDBOX_SERVER_ID, tool_definition(self.settings, runner.backend.languages, runner.backend.kind)
        )

    async def __call__(self, call: ToolCall) -> ToolResult:
        """Run the code of an allowed run_code call and return its result."""
        languages = self.runner.backend.languages
        try:
            run = parse_arguments(call.arguments, self.settings, languages)
        except CodeArgumentError as exc:
            call.outcome, call.detail = "denied", str(exc)
            return tool_error(f"run_code was not run: {exc}")
        session = call.session if self.settings.session_sandboxes else None
        tag = SandboxTag(client=call.client, call_id=call.call_id, session=session)
        call.forwarded_at = time.monotonic()
        try:
            outcome = await self.runner.run(run, tag)
        except SandboxError as exc:
            log.warning("run_code_failed", call_id=call.call_id, backend=exc.backend, error=str(exc))
            call.outcome, call.detail = "downstream_failed", str(exc)
            return tool_error(str(exc))
        call.billed_seconds = outcome.seconds
        call.detail = run_summary(self.runner.backend.kind, run.language, outcome)
        log.info(
            "run_code_finished",
            call_id=call.call_id,
            backend=self.runner.backend.kind,
            language=run.language,
            seconds=round(outcome.seconds, 3),
            exit_code=outcome.exit_code,
            stopped=outcome.stopped,
        )
        # The runner discards a session's sandbox once a run in it had to be stopped.
        session_ended = session is not None and outcome.stopped is not None
        return render_outcome(outcome, self.settings.max_output_bytes, session_ended=session_ended)

    def watch_session(self, connection: Any, client: str, session: str | None) -> None:
        """Destroy the session's sandbox once the HTTP session's connection closes.

        `connection` is the SDK's per-session connection object, whose exit stack runs when the
        session ends (see the note in `notifications.py`). Idle sandboxes are reaped regardless.
        """
        if session is None or not self.settings.session_sandboxes or (client, session) in self._watched:
            return
        exit_stack = getattr(connection, "exit_stack", None)
        if exit_stack is None:
            return
        self._watched.add((client, session))
        exit_stack.callback(self._forget, client, session)

    def _forget(self, client: str, session: str) -> None:
        self._watched.discard((client, session))
        self.runner.session_ended(client, session)


def run_summary(backend: str, language: str, outcome: RunOutcome) -> str:
    """Describe a finished run for its audit record: where it ran, how long, how it ended."""
    ending = "no exit code" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
    summary = f"{backend} sandbox, {language}, {outcome.seconds:.3f} s, {ending}"
    if outcome.stopped is not None:
        summary += f", stopped: {outcome.stopped}"
    if outcome.output_capped:
        summary += ", output cut at the limit"
    return summary


@asynccontextmanager
async def running_code_tool(
    settings: SandboxSettings | None, environ: Mapping[str, str]
) -> AsyncIterator[CodeTool | None]:
    """Start the run_code tool's backend when `[sandbox]` is configured; yield None when it is not."""
    if settings is None:
        yield None
        return
    runner = CodeRunner(settings, open_backend(settings, environ))
    async with runner.running():
        yield CodeTool(runner)
