"""Containment tests that every operating-system sandbox backend must pass.

A backend's test module subclasses `ContainmentContract` as `Test...` and provides a
`backend` fixture, and pytest runs every test below against that backend (the `listener`
fixture is in this folder's conftest.py). The class
attributes hold what differs between backends. Network tests aim only at a listener
the test opens on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import ClassVar

import psutil
import pytest
from sandbox_support import TEST_LIMITS, limits, run_once

from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, OutputCapture, SandboxBackend, SandboxTag

RUNAWAY_CODE = [
    pytest.param("import os\nwhile True:\n    os.fork()", id="fork-bomb"),
    pytest.param("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", id="memory-bomb"),
    pytest.param("while True:\n    pass", id="infinite-loop"),
    pytest.param("import time\ntime.sleep(1000)", id="sleep"),
]


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


def session_tag(name: str) -> SandboxTag:
    return SandboxTag(client="test", call_id=name, session=name)


def each_fails(paths: list[str]) -> str:
    """Return Python code that counts, in `failed`, the paths it cannot open for writing."""
    lines = []
    for path in paths:
        lines += ["try:", f"    open({path!r}, 'w')", "except OSError:", "    failed += 1"]
    return "\n".join(lines)


class ContainmentContract:
    """The tests; a subclass named `Test...` runs them against its module's `backend` fixture."""

    # Errors a connection to the host's listener may end with.
    connect_errors: ClassVar[frozenset[str]] = frozenset({"ConnectionRefusedError"})
    # A name that must not resolve inside the sandbox.
    unresolvable_name: ClassVar[str] = "mcp-guard.test"
    # Paths outside the workspace that code must not be able to create or overwrite.
    unwritable_paths: ClassVar[tuple[str, ...]] = ("/usr/mcp-guard-test", "/new-file")
    # How much later than its time limit a stopped run may end.
    stop_margin_seconds: ClassVar[float] = 1.0

    @pytest.mark.legitimate("sandbox resource exhaustion")
    async def test_python_returns_last_value(self, backend: SandboxBackend) -> None:
        outcome = await run_once(backend, "print('hello')\n6 * 7")

        assert outcome.stdout == "hello\n"
        assert outcome.stderr == ""
        assert [result.data for result in outcome.results] == ["42"]
        assert outcome.exit_code == 0

    @pytest.mark.legitimate("sandbox resource exhaustion")
    async def test_python_error_has_traceback(self, backend: SandboxBackend) -> None:
        outcome = await run_once(backend, "def f():\n    return 1 / 0\nf()")

        assert outcome.error is not None
        assert outcome.error.name == "ZeroDivisionError"
        assert 'File "<code>", line 2, in f' in outcome.error.traceback
        assert outcome.exit_code == 1

    async def test_python_syntax_error_shows_code_only(self, backend: SandboxBackend) -> None:
        outcome = await run_once(backend, "x = (1,\nprint(x)")

        assert outcome.error is not None
        assert outcome.error.name == "SyntaxError"
        assert 'File "<code>", line 1' in outcome.error.traceback
        # The parser's and the runner's own frames are left out.
        assert "ast.py" not in outcome.error.traceback
        assert outcome.error.traceback.count('File "') == 1

    @pytest.mark.legitimate("sandbox resource exhaustion")
    async def test_python_exit_status_kept(self, backend: SandboxBackend) -> None:
        outcome = await run_once(backend, "import sys\nsys.exit(3)")

        assert outcome.exit_code == 3

    @pytest.mark.attack("sandbox network escape")
    async def test_host_listener_unreachable(self, backend: SandboxBackend, listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"

        outcome = await run_once(backend, code)

        assert outcome.error is not None
        assert outcome.error.name in self.connect_errors
        with pytest.raises(TimeoutError):
            listener.accept()

    @pytest.mark.attack("sandbox network escape")
    async def test_name_resolution_fails(self, backend: SandboxBackend) -> None:
        outcome = await run_once(
            backend, f"import socket\nsocket.getaddrinfo({self.unresolvable_name!r}, 80)"
        )

        assert outcome.error is not None
        assert outcome.error.name == "gaierror"

    @pytest.mark.attack("sandbox network escape")
    async def test_allowed_hosts_rejected(self, backend: SandboxBackend) -> None:
        with pytest.raises(SandboxUnavailable, match="no network"):
            await backend.create(limits(allowed_hosts=("pypi.org",)), SandboxTag(client="test", call_id="1"))

    @pytest.mark.attack("sandbox reads gateway secrets")
    async def test_gateway_environment_hidden(
        self, backend: SandboxBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        canary = f"canary-{uuid.uuid4().hex}"
        monkeypatch.setenv("MCP_GUARD_TEST_SECRET", canary)

        python = await run_once(backend, "import os\n'MCP_GUARD_TEST_SECRET' in os.environ")
        shell = await run_once(backend, "env; cat /proc/1/environ", "shell")

        assert python.results[0].data == "False"
        assert canary not in shell.stdout

    @pytest.mark.attack("sandbox reads host files")
    async def test_etc_shadow_unreadable(self, backend: SandboxBackend) -> None:
        outcome = await run_once(backend, "open('/etc/shadow').read()")

        assert outcome.error is not None
        assert outcome.error.name in {"FileNotFoundError", "PermissionError"}

    @pytest.mark.attack("sandbox reads host files")
    async def test_writes_outside_workspace_fail(self, backend: SandboxBackend) -> None:
        targets = list(self.unwritable_paths)

        outcome = await run_once(backend, f"failed = 0\n{each_fails(targets)}\nfailed")

        assert outcome.results[0].data == str(len(targets))

    @pytest.mark.parametrize("code", RUNAWAY_CODE)
    @pytest.mark.attack("sandbox resource exhaustion")
    async def test_runaway_code_stopped_in_time(self, backend: SandboxBackend, code: str) -> None:
        sandbox_limits = limits(timeout_seconds=2.0)
        sandbox = await backend.create(sandbox_limits, session_tag("runaway"))
        try:
            start = time.monotonic()
            outcome = await sandbox.run(CodeRun("python", code), OutputCapture(1024))
            seconds = elapsed_since(start)
            after = await sandbox.run(CodeRun("python", "'still serving'"), OutputCapture(1024))
        finally:
            await sandbox.aclose()

        assert seconds < sandbox_limits.timeout_seconds + self.stop_margin_seconds
        assert outcome.exit_code != 0
        assert after.results[0].data == "'still serving'"

    @pytest.mark.attack("sandbox resource exhaustion")
    async def test_timeout_reported_as_stopped(self, backend: SandboxBackend) -> None:
        outcome = await run_once(
            backend, "import time\ntime.sleep(1000)", sandbox_limits=limits(timeout_seconds=1.0)
        )

        assert outcome.stopped == "timeout"
        assert outcome.exit_code is None

    @pytest.mark.attack("sandbox resource exhaustion")
    async def test_output_cap_stops_endless_output(self, backend: SandboxBackend) -> None:
        gateway = psutil.Process()
        before = gateway.memory_info().rss
        start = time.monotonic()

        outcome = await run_once(backend, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")

        assert outcome.output_capped
        assert outcome.stopped == "output_cap"
        assert len(outcome.stdout.encode()) <= TEST_LIMITS.max_output_bytes
        assert elapsed_since(start) < TEST_LIMITS.timeout_seconds
        assert gateway.memory_info().rss - before < 50 * 1024 * 1024

    @pytest.mark.attack("sandbox resource exhaustion")
    async def test_workspace_size_limited(self, backend: SandboxBackend) -> None:
        code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)"

        outcome = await run_once(backend, code)

        assert outcome.error is not None
        assert outcome.error.name == "OSError"

    @pytest.mark.attack("sandbox state leaks between runs")
    async def test_workspace_empty_each_run(self, backend: SandboxBackend) -> None:
        await run_once(backend, "open('note.txt', 'w').write('left behind')")

        outcome = await run_once(backend, "import os\nos.path.exists('note.txt')")

        assert outcome.results[0].data == "False"

    @pytest.mark.attack("sandbox state leaks between runs")
    async def test_session_keeps_files_between_runs(self, backend: SandboxBackend) -> None:
        first = await backend.create(TEST_LIMITS, session_tag("s1"))
        other = await backend.create(TEST_LIMITS, session_tag("s2"))
        try:
            await first.run(CodeRun("python", "open('note.txt', 'w').write('kept')"), OutputCapture(1024))
            again = await first.run(CodeRun("python", "open('note.txt').read()"), OutputCapture(1024))
            elsewhere = await other.run(CodeRun("python", "import os\nos.listdir('.')"), OutputCapture(1024))
        finally:
            await first.aclose()
            await other.aclose()

        assert again.results[0].data == "'kept'"
        assert elsewhere.results[0].data == "[]"
