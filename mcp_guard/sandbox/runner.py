"""Runs run_code calls on the configured backend: a fresh sandbox per call, or one per session.

The runner owns the backend and every session sandbox. A fresh sandbox is
destroyed when its call ends, however it ends (result, error, timeout,
cancellation), in a shielded and time-bounded clean-up. A session sandbox lives
until its session has been idle for `session_idle_seconds`, until the gateway
stops, or until it fails. Runs within one session take turns.

Policy, limits, approval and audit are applied before a call reaches the runner.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import structlog

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.errors import SandboxError, SandboxFailed, SandboxUnavailable
from mcp_guard.sandbox.base import (
    CodeRun,
    OutputCapture,
    RunOutcome,
    Sandbox,
    SandboxBackend,
    SandboxLimits,
    SandboxTag,
)

log = structlog.get_logger(module=__name__)

# Bounds the destruction of one sandbox (a container removal, an E2B kill request).
CLOSE_SECONDS = 15.0
# Bounds the removal of sandboxes an earlier gateway left behind, at start-up.
ORPHAN_SECONDS = 30.0
# How often idle session sandboxes are looked for.
REAP_INTERVAL_SECONDS = 5.0
# Bounds the start-up check of the backend; a slow backend is checked again on the first call.
CHECK_SECONDS = 30.0


def sandbox_limits(settings: SandboxSettings) -> SandboxLimits:
    """Return the limits every sandbox is held to, from the `[sandbox]` settings."""
    return SandboxLimits(
        timeout_seconds=settings.timeout_seconds,
        cpu_seconds=settings.cpu_seconds,
        memory_bytes=settings.memory_mb * 1024 * 1024,
        max_processes=settings.max_processes,
        max_file_bytes=settings.max_file_mb * 1024 * 1024,
        max_output_bytes=settings.max_output_bytes,
        allowed_hosts=tuple(settings.allowed_hosts),
    )


@dataclass
class _Session:
    sandbox: Sandbox
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    runs: int = 0
    ended: bool = False
    """The session ended, so the sandbox is destroyed at the next reaping that finds it idle."""


class CodeRunner:
    """Runs code for run_code calls. Use `running()` to start and stop it."""

    def __init__(
        self,
        settings: SandboxSettings,
        backend: SandboxBackend,
        *,
        reap_interval: float = REAP_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self._reap_interval = reap_interval
        self.limits = sandbox_limits(settings)
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._opening: set[tuple[str, str]] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CodeRunner]:
        """Check the backend, remove orphans, reap idle sessions while open, destroy everything on exit."""
        await self._start_up()
        try:
            async with anyio.create_task_group() as tasks:
                if self.settings.session_sandboxes:
                    tasks.start_soon(self._reap_idle)
                try:
                    yield self
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for key in list(self._sessions):
                    await self._drop(key, reason="gateway_stopping")
                with anyio.move_on_after(CLOSE_SECONDS):
                    await self.backend.aclose()

    async def run(self, run: CodeRun, tag: SandboxTag) -> RunOutcome:
        """Run `run` for the caller named in `tag`, in its session's sandbox or a fresh one.

        Raises:
            SandboxUnavailable: The backend cannot run code here; nothing ran.
            SandboxFailed: The sandbox failed; a session's sandbox is then destroyed.
        """
        output = OutputCapture(self.limits.max_output_bytes)
        if self.settings.session_sandboxes and tag.session is not None:
            return await self._run_in_session(run, tag, output)
        sandbox = await self.backend.create(self.limits, tag)
        try:
            return await sandbox.run(run, output)
        finally:
            await _close(sandbox, self.backend.kind)

    def session_ended(self, client: str, session: str) -> None:
        """Mark the sandbox of a session that has ended for destruction at the next reaping."""
        existing = self._sessions.get((client, session))
        if existing is not None:
            existing.ended = True

    async def _start_up(self) -> None:
        try:
            with anyio.fail_after(CHECK_SECONDS):
                await self.backend.check()
        except (SandboxError, TimeoutError) as exc:
            # The gateway still serves its other tools; every run_code call fails with this reason.
            log.error("sandbox_unavailable", backend=self.backend.kind, error=str(exc) or "check timed out")
            return
        with anyio.move_on_after(ORPHAN_SECONDS):
            try:
                removed = await self.backend.remove_orphans()
            except SandboxError as exc:
                log.warning("sandbox_orphans_not_removed", backend=self.backend.kind, error=str(exc))
            else:
                if removed:
                    log.warning("sandbox_orphans_removed", backend=self.backend.kind, count=removed)
        log.info("sandbox_ready", backend=self.backend.kind, languages=sorted(self.backend.languages))

    async def _run_in_session(self, run: CodeRun, tag: SandboxTag, output: OutputCapture) -> RunOutcome:
        assert tag.session is not None
        key = (tag.client, tag.session)
        session = await self._session(key, tag)
        async with session.lock:
            if self._sessions.get(key) is not session:
                raise SandboxFailed(
                    self.backend.kind, "the session's sandbox was destroyed while this run waited"
                )
            session.last_used = time.monotonic()
            try:
                outcome = await session.sandbox.run(run, output)
            except BaseException:
                # A sandbox that failed (or whose run was cancelled) is not trusted for another run.
                await self._drop(key, reason="run_failed")
                raise
            session.runs += 1
            session.last_used = time.monotonic()
            if outcome.stopped is not None:
                # Stopping a run may take the sandbox down with it (E2B kills it), and code that had
                # to be stopped is not trusted with the session's next run either.
                await self._drop(key, reason=f"run_stopped_{outcome.stopped}")
            return outcome

    async def _session(self, key: tuple[str, str], tag: SandboxTag) -> _Session:
        existing = self._sessions.get(key)
        if existing is not None:
            return existing
        if len(self._sessions) + len(self._opening) >= self.settings.max_session_sandboxes:
            raise SandboxUnavailable(
                self.backend.kind,
                f"{self.settings.max_session_sandboxes} session sandboxes are already open",
                "Try again once a session ends or idles, or raise [sandbox] max_session_sandboxes.",
            )
        self._opening.add(key)
        try:
            sandbox = await self.backend.create(self.limits, tag)
        finally:
            self._opening.discard(key)
        # Another call of the same session may have opened one while this one was created.
        existing = self._sessions.get(key)
        if existing is not None:
            await _close(sandbox, self.backend.kind)
            return existing
        session = self._sessions[key] = _Session(sandbox)
        log.info("sandbox_session_opened", backend=self.backend.kind, client=key[0])
        return session

    async def _reap_idle(self) -> None:
        while True:
            await anyio.sleep(self._reap_interval)
            now = time.monotonic()
            for key, session in list(self._sessions.items()):
                if session.lock.locked():
                    continue
                if session.ended:
                    await self._drop(key, reason="session_ended")
                elif now - session.last_used >= self.settings.session_idle_seconds:
                    await self._drop(key, reason="idle")

    async def _drop(self, key: tuple[str, str], *, reason: str) -> None:
        session = self._sessions.pop(key, None)
        if session is None:
            return
        log.info(
            "sandbox_session_closed",
            backend=self.backend.kind,
            client=key[0],
            reason=reason,
            runs=session.runs,
        )
        await _close(session.sandbox, self.backend.kind)


async def _close(sandbox: Sandbox, kind: str) -> None:
    """Destroy `sandbox`, even when the caller is being cancelled, within `CLOSE_SECONDS`."""
    with anyio.move_on_after(CLOSE_SECONDS, shield=True) as scope:
        try:
            await sandbox.aclose()
        except SandboxError as exc:
            log.error("sandbox_not_destroyed", backend=kind, error=str(exc))
    if scope.cancelled_caught:
        log.error("sandbox_not_destroyed", backend=kind, error=f"timed out after {CLOSE_SECONDS:g} s")
