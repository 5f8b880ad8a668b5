"""The code runner on the local backend: fresh sandboxes, session sandboxes and their ends."""

from __future__ import annotations

import os

import anyio
import psutil
import pytest

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, SandboxTag
from mcp_guard.sandbox.local import LocalBackend
from mcp_guard.sandbox.runner import CodeRunner

pytestmark = pytest.mark.anyio

WRITE = CodeRun("python", "open('note.txt', 'w').write('kept')")
# Sessions are reaped this often here, so the tests need not wait for the production interval.
REAP_INTERVAL = 0.1
READ = CodeRun("python", "import os\nos.path.exists('note.txt')")


def runner(**settings: object) -> CodeRunner:
    config = SandboxSettings.model_validate({"backend": "local", "timeout_seconds": 2.0, **settings})
    return CodeRunner(config, LocalBackend(config, os.environ), reap_interval=REAP_INTERVAL)


def sandbox_processes() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if child.name() == "bwrap"]


@pytest.mark.attack("sandbox outlives its run")
async def test_runner_cancelled_run_leaves_nothing() -> None:
    async with runner().running() as code:
        with anyio.move_on_after(0.5):
            await code.run(CodeRun("shell", "sleep 1000"), SandboxTag(client="a", call_id="1"))
        left = sandbox_processes()

    assert left == []


@pytest.mark.attack("sandbox state leaks between runs")
async def test_runner_sessions_keep_files_apart() -> None:
    async with runner(session_sandboxes=True).running() as code:
        await code.run(WRITE, SandboxTag(client="a", call_id="1", session="s1"))
        same = await code.run(READ, SandboxTag(client="a", call_id="2", session="s1"))
        other_session = await code.run(READ, SandboxTag(client="a", call_id="3", session="s2"))
        other_client = await code.run(READ, SandboxTag(client="b", call_id="4", session="s1"))

    assert same.results[0].data == "True"
    assert other_session.results[0].data == "False"
    assert other_client.results[0].data == "False"


@pytest.mark.attack("sandbox resource exhaustion")
async def test_runner_session_cap_rejects_new() -> None:
    async with runner(session_sandboxes=True, max_session_sandboxes=1).running() as code:
        await code.run(READ, SandboxTag(client="a", call_id="1", session="s1"))
        with pytest.raises(SandboxUnavailable, match="1 session sandboxes are already open"):
            await code.run(READ, SandboxTag(client="a", call_id="2", session="s2"))
        code.session_ended("a", "s1")
        await anyio.sleep(REAP_INTERVAL * 5)
        freed = await code.run(READ, SandboxTag(client="a", call_id="3", session="s2"))

    assert freed.exit_code == 0


@pytest.mark.attack("sandbox state leaks between runs")
async def test_runner_stopped_run_ends_session() -> None:
    async with runner(session_sandboxes=True).running() as code:
        await code.run(WRITE, SandboxTag(client="a", call_id="1", session="s1"))
        stopped = await code.run(
            CodeRun("shell", "sleep 1000"), SandboxTag(client="a", call_id="2", session="s1")
        )
        after = await code.run(READ, SandboxTag(client="a", call_id="3", session="s1"))

    assert stopped.stopped == "timeout"
    assert after.results[0].data == "False"


@pytest.mark.attack("sandbox state leaks between runs")
async def test_runner_idle_session_destroyed() -> None:
    async with runner(session_sandboxes=True, session_idle_seconds=0.1).running() as code:
        await code.run(WRITE, SandboxTag(client="a", call_id="1", session="s1"))
        await anyio.sleep(REAP_INTERVAL * 5)
        after = await code.run(READ, SandboxTag(client="a", call_id="2", session="s1"))

    assert after.results[0].data == "False"
