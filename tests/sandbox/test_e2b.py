"""The e2b backend against a fake E2B on 127.0.0.1 that speaks the SDK's real HTTP protocol.

Nothing of the SDK is mocked: the backend's `E2B` client sends real requests to
`e2b_fake.FakeE2B`, and the tests assert on what the fake recorded (the create
body, headers, kills, list queries) and on the `RunOutcome` the backend returns.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Literal

import anyio
import pytest
import structlog
from e2b_fake import (
    ExecuteReply,
    FakeE2B,
    execution_count_line,
    serve_fake,
    stderr_line,
    stdout_line,
)
from sandbox_support import limits

from mcp_guard.config.sandbox import E2BSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxFailed, SandboxUnavailable
from mcp_guard.sandbox.base import CodeError, CodeRun, OutputCapture, RichOutput, SandboxTag
from mcp_guard.sandbox.e2b import E2BBackend

pytestmark = pytest.mark.anyio

KEY_VARIABLE = "MCP_GUARD_TEST_E2B_KEY"
API_KEY = "e2b_test_key_from_mapping_0123456789"
# Set in the test process's own environment; neither may reach E2B.
PROCESS_KEY = "e2b_process_env_key_must_not_be_sent"
CANARY = "canary-value-from-the-gateway-environment"
LIFETIME_SECONDS = 120
TAG = SandboxTag(client="alice", call_id="call-17", session="session-3")
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg=="
)
# A stopped run must return within its timeout plus this much, the kill request included. The
# SDK's own execution timeout fires at about twice its value, so this also shows the backend's
# own deadline enforced the limit.
STOP_SLACK_SECONDS = 1.0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeE2B]:
    monkeypatch.setenv("E2B_API_KEY", PROCESS_KEY)
    # Debug mode would skip every create and kill request; the backend must switch it off.
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("MCP_GUARD_TEST_CANARY", CANARY)
    yield from serve_fake()


@pytest.fixture
def backend(fake: FakeE2B) -> E2BBackend:
    return E2BBackend(_settings(fake), {KEY_VARIABLE: API_KEY})


def _settings(fake: FakeE2B) -> SandboxSettings:
    return SandboxSettings(
        backend="e2b",
        e2b=E2BSandboxSettings(
            api_key_from=KEY_VARIABLE,
            api_url=fake.url,
            sandbox_url=fake.url,
            lifetime_seconds=LIFETIME_SECONDS,
        ),
    )


def _create_body(fake: FakeE2B) -> dict[str, object]:
    (request,) = fake.received("POST", "/v2/sandboxes")
    body: dict[str, object] = request.json()
    return body


def _python(code: str = "print('ok')") -> CodeRun:
    return CodeRun(language="python", code=code)


class FirstOutputCapture(OutputCapture):
    """An `OutputCapture` that sets `started` when the first chunk of output arrives."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.started = anyio.Event()

    def add(self, stream: Literal["stdout", "stderr"], data: bytes) -> bool:
        self.started.set()
        return super().add(stream, data)


@pytest.mark.attack("sandbox network escape")
async def test_create_denies_internet_without_allowed_hosts(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)
    await sandbox.aclose()

    body = _create_body(fake)
    assert body["allow_internet_access"] is False
    assert body["network"] == {"denyOut": ["0.0.0.0/0"]}


@pytest.mark.legitimate("sandbox network escape")
async def test_create_allows_only_listed_hosts(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(allowed_hosts=("pypi.org", "*.example.com")), TAG)
    await sandbox.aclose()

    body = _create_body(fake)
    assert body["network"] == {"allowOut": ["pypi.org", "*.example.com"], "denyOut": ["0.0.0.0/0"]}
    assert "allow_internet_access" not in body


async def test_create_caps_lifetime(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)
    await sandbox.aclose()

    assert _create_body(fake)["timeout"] == LIFETIME_SECONDS


async def test_create_tags_sandbox(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)
    await sandbox.aclose()

    metadata = _create_body(fake)["metadata"]
    assert isinstance(metadata, dict)
    owner = metadata.pop("mcp-guard-owner")
    assert metadata == {"mcp-guard": "1", "client": "alice", "call_id": "call-17", "session": "session-3"}
    assert owner.startswith(f"{socket.gethostname()}/{os.getpid()}/")


async def test_create_leaves_out_missing_session(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), SandboxTag(client="alice", call_id="call-18"))
    await sandbox.aclose()

    metadata = _create_body(fake)["metadata"]
    assert isinstance(metadata, dict)
    assert "session" not in metadata


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_gateway_environment_is_never_sent(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)
    await sandbox.run(_python(), OutputCapture(4096))
    await sandbox.aclose()

    sent = fake.all_request_text()
    assert _create_body(fake)["envVars"] == {}
    assert CANARY not in sent
    assert PROCESS_KEY not in sent


async def test_api_key_comes_from_environ_mapping(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)
    await sandbox.aclose()

    (create,) = fake.received("POST", "/v2/sandboxes")
    (kill,) = fake.received("DELETE", "/sandboxes/")
    assert create.headers["x-api-key"] == API_KEY
    assert kill.headers["x-api-key"] == API_KEY


async def test_run_maps_execution_to_outcome(backend: E2BBackend, fake: FakeE2B) -> None:
    traceback = (
        'Traceback (most recent call last):\n  File "<cell>", line 3\nZeroDivisionError: division by zero'
    )
    fake.execute_reply = ExecuteReply(
        lines=[
            stdout_line("hello\n"),
            stderr_line("careful\n"),
            {"type": "result", "text": "<Figure size 640x480 with 1 Axes>", "png": PNG_BASE64},
            {"type": "result", "text": "42", "is_main_result": True},
            {
                "type": "error",
                "name": "ZeroDivisionError",
                "value": "division by zero",
                "traceback": traceback,
            },
            execution_count_line(1),
        ]
    )
    sandbox = await backend.create(limits(), TAG)

    outcome = await sandbox.run(_python("1/0"), OutputCapture(4096))
    await sandbox.aclose()

    assert outcome.stdout == "hello\n"
    assert outcome.stderr == "careful\n"
    assert outcome.results == [RichOutput(kind="png", data=PNG_BASE64), RichOutput(kind="text", data="42")]
    assert outcome.error == CodeError(name="ZeroDivisionError", value="division by zero", traceback=traceback)
    assert outcome.exit_code == 1
    assert outcome.stopped is None


async def test_run_without_error_exits_zero(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)

    outcome = await sandbox.run(_python(), OutputCapture(4096))
    await sandbox.aclose()

    assert outcome.exit_code == 0
    assert outcome.error is None
    assert outcome.stdout == "ok\n"


@pytest.mark.parametrize(
    ("language", "e2b_language"), [("python", "python"), ("javascript", "javascript"), ("shell", "bash")]
)
async def test_run_sends_e2b_language(
    backend: E2BBackend, fake: FakeE2B, language: Literal["python", "javascript", "shell"], e2b_language: str
) -> None:
    sandbox = await backend.create(limits(), TAG)

    await sandbox.run(CodeRun(language=language, code="echo 1"), OutputCapture(4096))
    await sandbox.aclose()

    (execute,) = fake.received("POST", "/execute")
    assert execute.json()["language"] == e2b_language
    assert execute.json()["code"] == "echo 1"


@pytest.mark.attack("sandbox outlives its run")
async def test_timeout_returns_stopped_and_kills(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(lines=[stdout_line("working\n")], stall_seconds=30)
    sandbox = await backend.create(limits(timeout_seconds=2.0), TAG)
    started = time.monotonic()

    outcome = await sandbox.run(_python("while True: pass"), OutputCapture(4096))
    elapsed = time.monotonic() - started

    assert outcome.stopped == "timeout"
    assert outcome.exit_code is None
    assert outcome.stdout == "working\n"
    assert elapsed < 2.0 + STOP_SLACK_SECONDS
    assert fake.killed_ids() == [sandbox.sandbox_id]


async def test_killed_sandbox_rejects_next_run(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(stall_seconds=30)
    sandbox = await backend.create(limits(timeout_seconds=0.5), TAG)
    await sandbox.run(_python(), OutputCapture(4096))

    with pytest.raises(SandboxFailed, match="killed when an earlier run"):
        await sandbox.run(_python(), OutputCapture(4096))
    assert len(fake.received("POST", "/execute")) == 1


@pytest.mark.attack("sandbox outlives its run")
async def test_sdk_timeout_error_kills_sandbox(backend: E2BBackend, fake: FakeE2B) -> None:
    # A 502 from E2B's proxy makes the SDK raise its TimeoutException at once.
    fake.execute_reply = ExecuteReply(status=502, error_body="sandbox timeout")
    sandbox = await backend.create(limits(), TAG)

    with pytest.raises(SandboxFailed, match="did not respond in time"):
        await sandbox.run(_python(), OutputCapture(4096))
    assert fake.killed_ids() == [sandbox.sandbox_id]


@pytest.mark.attack("sandbox outlives its run")
async def test_execute_error_status_kills_sandbox(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(status=500, error_body="kernel died")
    sandbox = await backend.create(limits(), TAG)

    with pytest.raises(SandboxFailed, match="kernel died"):
        await sandbox.run(_python(), OutputCapture(4096))
    assert fake.killed_ids() == [sandbox.sandbox_id]


@pytest.mark.attack("sandbox outlives its run")
async def test_dropped_connection_kills_sandbox(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(lines=[stdout_line("partial\n")], drop_connection=True)
    sandbox = await backend.create(limits(), TAG)

    with pytest.raises(SandboxFailed, match="request to E2B failed"):
        await sandbox.run(_python(), OutputCapture(4096))
    assert fake.killed_ids() == [sandbox.sandbox_id]


@pytest.mark.attack("sandbox outlives its run")
async def test_cancelled_run_kills_sandbox(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(lines=[stdout_line("started\n")], stall_seconds=30)
    sandbox = await backend.create(limits(timeout_seconds=20.0), TAG)
    output = FirstOutputCapture(4096)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(sandbox.run, _python(), output)
        await output.started.wait()
        task_group.cancel_scope.cancel()

    assert fake.killed_ids() == [sandbox.sandbox_id]


@pytest.mark.attack("sandbox outlives its run")
async def test_output_cap_stops_run_and_kills(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.execute_reply = ExecuteReply(endless_stdout=True)
    sandbox = await backend.create(limits(timeout_seconds=20.0, max_output_bytes=4096), TAG)
    started = time.monotonic()

    outcome = await sandbox.run(_python("while True: print('x' * 80)"), OutputCapture(4096))

    assert outcome.stopped == "output_cap"
    assert outcome.output_capped is True
    assert len(outcome.stdout.encode()) == 4096
    assert outcome.exit_code is None
    # Stopped at the cap, long before the 20 s time limit, even on a busy machine.
    assert time.monotonic() - started < 10.0
    assert fake.killed_ids() == [sandbox.sandbox_id]


async def test_session_sandbox_runs_twice_then_closes(backend: E2BBackend, fake: FakeE2B) -> None:
    sandbox = await backend.create(limits(), TAG)

    first = await sandbox.run(_python("x = 1"), OutputCapture(4096))
    second = await sandbox.run(_python("print(x)"), OutputCapture(4096))
    killed_before_close = fake.killed_ids()
    await sandbox.aclose()
    await sandbox.aclose()

    assert first.exit_code == 0
    assert second.exit_code == 0
    assert killed_before_close == []
    assert fake.killed_ids() == [sandbox.sandbox_id]


async def test_failed_kill_is_contained(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.kill_status = 500
    sandbox = await backend.create(limits(), TAG)

    with structlog.testing.capture_logs() as events:
        await sandbox.aclose()

    assert [e["event"] for e in events] == ["e2b_sandbox_kill_failed"]


def ended_pid() -> int:
    """Return the PID of a process that has ended: a child that ran `true` and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


async def test_remove_orphans_kills_tagged_sandboxes(backend: E2BBackend, fake: FakeE2B) -> None:
    ended = f"{socket.gethostname()}/{ended_pid()}/0123"
    tagged = {
        fake.add_sandbox({"mcp-guard": "1", "mcp-guard-owner": ended, "client": f"c{n}"}) for n in range(3)
    }
    untagged = fake.add_sandbox({"owner": "someone-else"})
    running = fake.add_sandbox({"mcp-guard": "1", "mcp-guard-owner": f"{socket.gethostname()}/1/0123"})
    elsewhere = fake.add_sandbox({"mcp-guard": "1", "mcp-guard-owner": f"other-host/{ended_pid()}/0123"})

    killed = await backend.remove_orphans()

    lists = fake.received("GET", "/v2/sandboxes")
    assert killed == 3
    assert set(fake.killed_ids()) == tagged
    assert untagged not in fake.killed_ids()
    assert running not in fake.killed_ids()
    assert elsewhere not in fake.killed_ids()
    assert lists[0].query_params()["metadata"] == "mcp-guard=1"
    # Five tagged sandboxes at two per page.
    assert len(lists) == 3


async def test_remove_orphans_contains_failure(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.add_sandbox({"mcp-guard": "1", "mcp-guard-owner": f"{socket.gethostname()}/{ended_pid()}/0123"})
    fake.list_status = 500

    with structlog.testing.capture_logs() as events:
        killed = await backend.remove_orphans()

    assert killed == 0
    assert "e2b_orphan_sweep_failed" in [e["event"] for e in events]
    assert fake.killed_ids() == []


@pytest.mark.attack("code run unsandboxed")
async def test_missing_key_is_unavailable_without_requests(fake: FakeE2B) -> None:
    backend = E2BBackend(_settings(fake), {})

    with pytest.raises(SandboxUnavailable, match=f"the variable {KEY_VARIABLE} is not set"):
        await backend.check()
    with pytest.raises(SandboxUnavailable, match=f"the variable {KEY_VARIABLE} is not set"):
        await backend.create(limits(), TAG)
    assert await backend.remove_orphans() == 0
    assert fake.requests == []


@pytest.mark.attack("code run unsandboxed")
async def test_rejected_key_is_unavailable(backend: E2BBackend, fake: FakeE2B) -> None:
    fake.accepted_key = "another-key"

    with pytest.raises(SandboxUnavailable, match="E2B rejected the API key") as caught:
        await backend.create(limits(), TAG)

    assert API_KEY not in str(caught.value)


@pytest.mark.attack("secret in audit trail or logs")
async def test_key_never_logged_or_shown(
    backend: E2BBackend, fake: FakeE2B, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake echoes the key it received in its error messages, as a careless server might.
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with structlog.testing.capture_logs() as events:
        fake.execute_reply = ExecuteReply(stall_seconds=30)
        sandbox = await backend.create(limits(timeout_seconds=0.5), TAG)
        await sandbox.run(_python(), OutputCapture(4096))
        fake.kill_status = 500
        other = await backend.create(limits(), TAG)
        await other.aclose()
        fake.list_status = 500
        await backend.remove_orphans()
        fake.accepted_key = "another-key"
        try:
            await backend.create(limits(), TAG)
        except SandboxUnavailable as exc:
            errors.append(str(exc))
        reprs = [repr(backend), repr(sandbox), repr(other)]

    assert events
    assert errors
    assert API_KEY not in repr(events)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(errors)
    assert API_KEY not in repr(reprs)
