"""The local (bubblewrap) backend against real namespaces: containment, limits and results.

Every test runs real code in a real bubblewrap sandbox. Network tests aim only
at a listener the test opens on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from sandbox_support import TEST_LIMITS, limits, run_once

from mcp_guard.config.sandbox import LocalSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, OutputCapture, SandboxTag
from mcp_guard.sandbox.local import LocalBackend

pytestmark = pytest.mark.anyio

# A stopped run may end at most this much later than its time limit.
STOP_MARGIN_SECONDS = 1.0


@pytest.fixture
def backend() -> LocalBackend:
    return LocalBackend(SandboxSettings(backend="local"), os.environ)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        yield server


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_python_returns_last_value(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "print('hello')\n6 * 7")

    assert outcome.stdout == "hello\n"
    assert [result.data for result in outcome.results] == ["42"]
    assert outcome.exit_code == 0


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_python_error_has_traceback(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "def f():\n    return 1 / 0\nf()")

    assert outcome.error is not None
    assert outcome.error.name == "ZeroDivisionError"
    assert 'File "<code>", line 2, in f' in outcome.error.traceback
    assert outcome.exit_code == 1


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_shell_and_javascript_run(backend: LocalBackend) -> None:
    shell = await run_once(backend, "echo $((6 * 7))", "shell")
    javascript = await run_once(backend, "console.log(6 * 7)", "javascript")

    assert shell.stdout == "42\n"
    assert javascript.stdout == "42\n"


@pytest.mark.attack("sandbox network escape")
async def test_network_host_listener_unreachable(backend: LocalBackend, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"

    outcome = await run_once(backend, code)

    assert outcome.error is not None
    assert outcome.error.name == "ConnectionRefusedError"
    with pytest.raises(TimeoutError):
        listener.accept()


@pytest.mark.attack("sandbox network escape")
async def test_network_dns_fails(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "import socket\nsocket.getaddrinfo('localhost', 80)")

    assert outcome.error is not None
    assert outcome.error.name == "gaierror"


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_environment_gateway_variables_hidden(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("MCP_GUARD_TEST_SECRET", canary)

    python = await run_once(backend, "import os\nsorted(os.environ)")
    shell = await run_once(backend, "env; cat /proc/1/environ", "shell")

    assert python.results[0].data == "['HOME', 'LANG', 'PATH', 'PWD']"
    assert canary not in shell.stdout


@pytest.mark.skipif(
    os.geteuid() != 0, reason="placing a root-only file where the sandbox can see it needs root"
)
@pytest.mark.attack("sandbox reads host files")
async def test_files_root_only_unreadable_as_root(backend: LocalBackend) -> None:
    # /usr is the one host folder mounted in the sandbox. A sandbox that kept the root gateway's
    # user would read this file.
    canary = Path("/usr/local/share") / f"mcp-guard-canary-{uuid.uuid4().hex}"
    canary.write_text("secret", encoding="utf-8")
    canary.chmod(0o600)
    try:
        outcome = await run_once(backend, f"open({str(canary)!r}).read()")
    finally:
        canary.unlink()

    assert outcome.error is not None
    assert outcome.error.name == "PermissionError"


@pytest.mark.attack("sandbox reads host files")
async def test_files_etc_shadow_unreadable(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "open('/etc/shadow').read()")

    assert outcome.error is not None
    assert outcome.error.name in {"FileNotFoundError", "PermissionError"}


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import os\nwhile True:\n    os.fork()", id="fork-bomb"),
        pytest.param("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", id="memory-bomb"),
        pytest.param("while True:\n    pass", id="infinite-loop"),
        pytest.param("import time\ntime.sleep(1000)", id="sleep"),
    ],
)
@pytest.mark.attack("sandbox resource exhaustion")
async def test_runaway_code_stopped_in_time(backend: LocalBackend, code: str) -> None:
    sandbox_limits = limits(timeout_seconds=2.0)
    start = time.monotonic()

    outcome = await run_once(backend, code, sandbox_limits=sandbox_limits)
    after = await run_once(backend, "'still serving'")

    assert elapsed_since(start) < sandbox_limits.timeout_seconds + STOP_MARGIN_SECONDS + 0.5
    assert outcome.exit_code != 0
    assert after.results[0].data == "'still serving'"


@pytest.mark.attack("sandbox resource exhaustion")
async def test_timeout_reported_as_stopped(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "while True:\n    pass", sandbox_limits=limits(timeout_seconds=1.0))

    assert outcome.stopped == "timeout"
    assert outcome.exit_code is None


@pytest.mark.attack("sandbox resource exhaustion")
async def test_output_cap_stops_endless_output(backend: LocalBackend) -> None:
    gateway = psutil.Process()
    before = gateway.memory_info().rss
    start = time.monotonic()

    outcome = await run_once(backend, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")

    assert outcome.output_capped
    assert outcome.stopped == "output_cap"
    assert len(outcome.stdout) == TEST_LIMITS.max_output_bytes
    assert elapsed_since(start) < TEST_LIMITS.timeout_seconds
    assert gateway.memory_info().rss - before < 50 * 1024 * 1024


@pytest.mark.attack("sandbox reads host files", attempts=4)
async def test_workspace_writes_outside_fail(backend: LocalBackend) -> None:
    targets = ["/usr/mcp-guard-test", "/new-file", "/dev/new-file", "/run/code"]

    outcome = await run_once(backend, f"failed = 0\n{_each_fails(targets)}\nfailed")

    assert outcome.results[0].data == str(len(targets))


def _each_fails(paths: list[str]) -> str:
    lines = []
    for path in paths:
        lines += ["try:", f"    open({path!r}, 'w')", "except OSError:", "    failed += 1"]
    return "\n".join(lines)


@pytest.mark.attack("sandbox resource exhaustion")
async def test_workspace_size_limited(backend: LocalBackend) -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)"

    outcome = await run_once(backend, code)

    assert outcome.error is not None
    assert outcome.error.name == "OSError"


@pytest.mark.attack("sandbox state leaks between runs")
async def test_workspace_empty_each_run(backend: LocalBackend) -> None:
    await run_once(backend, "open('note.txt', 'w').write('left behind')")

    outcome = await run_once(backend, "import os\nos.path.exists('note.txt')")

    assert outcome.results[0].data == "False"


@pytest.mark.attack("sandbox state leaks between runs")
async def test_session_keeps_files_between_runs(backend: LocalBackend) -> None:
    first = await backend.create(TEST_LIMITS, SandboxTag(client="test", call_id="1", session="s1"))
    other = await backend.create(TEST_LIMITS, SandboxTag(client="test", call_id="2", session="s2"))
    try:
        await first.run(CodeRun("python", "open('note.txt', 'w').write('kept')"), OutputCapture(1024))
        again = await first.run(CodeRun("python", "open('note.txt').read()"), OutputCapture(1024))
        elsewhere = await other.run(CodeRun("python", "import os\nos.listdir('.')"), OutputCapture(1024))
    finally:
        await first.aclose()
        await other.aclose()

    assert again.results[0].data == "'kept'"
    assert elsewhere.results[0].data == "[]"


@pytest.mark.attack("sandbox outlives its run")
async def test_background_process_dies_with_run(backend: LocalBackend) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1.5)\n"
        "        open('/workspace/survived', 'w').write('yes')\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    sandbox = await backend.create(TEST_LIMITS, SandboxTag(client="test", call_id="1", session="s"))
    try:
        await sandbox.run(CodeRun("python", code), OutputCapture(1024))
        leftover = [p for p in psutil.Process().children(recursive=True) if "bwrap" in p.name()]
        await anyio.sleep(2.0)  # longer than the grandchild's sleep: it would have written by now
        outcome = await sandbox.run(
            CodeRun("python", "import os\nos.path.exists('survived')"), OutputCapture(1024)
        )
    finally:
        await sandbox.aclose()

    assert leftover == []
    assert outcome.results[0].data == "False"


@pytest.mark.attack("sandbox network escape")
async def test_allowed_hosts_rejected(backend: LocalBackend) -> None:
    with pytest.raises(SandboxUnavailable, match="no network"):
        await backend.create(limits(allowed_hosts=("pypi.org",)), SandboxTag(client="test", call_id="1"))


@pytest.mark.attack("code run unsandboxed")
async def test_missing_bubblewrap_reported(tmp_path: Path) -> None:
    settings = SandboxSettings(backend="local", local=LocalSandboxSettings(bwrap=str(tmp_path / "no-bwrap")))
    backend = LocalBackend(settings, os.environ)
    marker = tmp_path / "ran"

    with pytest.raises(SandboxUnavailable, match="bubblewrap") as raised:
        await run_once(backend, f"open({str(marker)!r}, 'w')")

    assert "apt-get install bubblewrap" in str(raised.value)
    assert not marker.exists()


@pytest.mark.attack("sandbox reads host files")
@pytest.mark.skipif(os.geteuid() != 0, reason="only a gateway running as root drops to another user")
async def test_root_without_run_as_user_rejected(tmp_path: Path) -> None:
    settings = SandboxSettings(
        backend="local", local=LocalSandboxSettings(run_as=f"no-such-user-{uuid.uuid4().hex[:8]}")
    )
    backend = LocalBackend(settings, os.environ)

    with pytest.raises(SandboxUnavailable, match="does not exist"):
        await run_once(backend, "1")
