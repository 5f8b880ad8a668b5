"""The local (bubblewrap) backend against real namespaces: containment, limits and results.

Every test runs real code in a real bubblewrap sandbox. Network tests aim only
at a listener the test opens on 127.0.0.1.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import anyio
import psutil
import pytest
from containment import ContainmentContract
from sandbox_support import TEST_LIMITS, run_once

from mcp_guard.config.sandbox import LocalSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, OutputCapture, SandboxTag
from mcp_guard.sandbox.local import LocalBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def backend() -> LocalBackend:
    return LocalBackend(SandboxSettings(backend="local"), os.environ)


class TestLocalContainment(ContainmentContract):
    # "localhost" too: the sandbox has no hosts file, so not even that name resolves.
    unresolvable_name = "localhost"
    unwritable_paths = ("/usr/mcp-guard-test", "/new-file", "/dev/new-file", "/run/code")
    stop_margin_seconds = 1.5


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_shell_and_javascript_run(backend: LocalBackend) -> None:
    shell = await run_once(backend, "echo $((6 * 7))", "shell")
    javascript = await run_once(backend, "console.log(6 * 7)", "javascript")

    assert shell.stdout == "42\n"
    assert javascript.stdout == "42\n"


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_environment_has_only_safe_names(backend: LocalBackend) -> None:
    outcome = await run_once(backend, "import os\nsorted(os.environ)")

    assert outcome.results[0].data == "['HOME', 'LANG', 'PATH', 'PWD']"


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
