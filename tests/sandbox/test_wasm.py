"""The wasm backend against real Node.js and real Pyodide.

Pyodide must be installed in mcp_guard/sandbox/wasm_runtime (`make install` runs `npm ci` there);
without it these tests fail rather than skip. Loading Pyodide takes a few seconds per sandbox, so
the tests that only run code share one kept sandbox, and only the tests about a fresh sandbox, or
that kill their sandbox, start their own.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from sandbox_support import TEST_LIMITS, limits, run_once

from mcp_guard.config.sandbox import SandboxSettings, WasmSandboxSettings
from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, OutputCapture, RunOutcome, SandboxTag
from mcp_guard.sandbox.wasm import DEFAULT_PYODIDE_DIR, WasmBackend, WasmSandbox

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CANARY_VARIABLE = "MCP_GUARD_WASM_CANARY"
CANARY_VALUE = "canary-7f3a9c"
# Modules the shared sandbox allows besides the defaults, so the tests can look for ways out.
EXTRA_IMPORTS = ["sys", "importlib", "socket", "os", "builtins"]
TAG = SandboxTag(client="test", call_id="test-call", session="test-session")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _pyodide_installed() -> None:
    if not (DEFAULT_PYODIDE_DIR / "pyodide.asm.wasm").is_file():
        pytest.fail(
            f"Pyodide is not installed in {DEFAULT_PYODIDE_DIR}: run `make install` "
            "(it runs `npm ci` in mcp_guard/sandbox/wasm_runtime)"
        )


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A secret in the test process's environment and in a host file."""
    path = tmp_path_factory.mktemp("host") / "secret.txt"
    path.write_text(CANARY_VALUE)
    os.environ[CANARY_VARIABLE] = CANARY_VALUE
    yield path
    del os.environ[CANARY_VARIABLE]


def backend(*extra_imports: str, **wasm: object) -> WasmBackend:
    defaults = WasmSandboxSettings().allowed_imports
    settings = WasmSandboxSettings(allowed_imports=[*defaults, *extra_imports], **wasm)  # type: ignore[arg-type]
    return WasmBackend(SandboxSettings(backend="wasm", wasm=settings), dict(os.environ))


@pytest.fixture(scope="module")
async def kept(canary: Path) -> AsyncIterator[WasmSandbox]:
    """One sandbox kept across the module's runs, as a session keeps it."""
    sandbox = await backend(*EXTRA_IMPORTS).create(TEST_LIMITS, TAG)
    yield sandbox
    await sandbox.aclose()


async def run(sandbox: WasmSandbox, code: str) -> RunOutcome:
    return await sandbox.run(
        CodeRun(language="python", code=code), OutputCapture(TEST_LIMITS.max_output_bytes)
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def accepted(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_run_prints_and_returns_last_value(kept: WasmSandbox) -> None:
    outcome = await run(kept, "print('hello')\nx = 6\nx * 7")

    assert outcome.stdout == "hello\n"
    assert outcome.exit_code == 0
    assert outcome.error is None
    assert [result.data for result in outcome.results] == ["42"]


async def test_run_writes_stderr_in_order(kept: WasmSandbox) -> None:
    outcome = await run(kept, "import sys\nprint('a', file=sys.stderr)\nprint('b', file=sys.stderr)")

    assert outcome.stderr == "a\nb\n"


async def test_exception_reports_name_and_traceback(kept: WasmSandbox) -> None:
    outcome = await run(kept, "def fail():\n    raise ValueError('bad value')\nfail()")

    assert outcome.exit_code == 1
    assert outcome.error is not None
    assert outcome.error.name == "ValueError"
    assert outcome.error.value == "bad value"
    assert 'File "<code>", line 2, in fail' in outcome.error.traceback
    assert "harness" not in outcome.error.traceback


async def test_sys_exit_status_kept(kept: WasmSandbox) -> None:
    failed = await run(kept, "import sys\nsys.exit(3)")
    succeeded = await run(kept, "import sys\nsys.exit()")

    assert failed.exit_code == 3
    assert succeeded.exit_code == 0
    assert succeeded.error is None


async def test_globals_and_files_persist_in_kept_sandbox(kept: WasmSandbox) -> None:
    await run(kept, "kept_value = 'still here'\nopen('/tmp/kept.txt', 'w').write('file here')")

    outcome = await run(kept, "kept_value, open('/tmp/kept.txt').read()")

    assert [result.data for result in outcome.results] == ["('still here', 'file here')"]


@pytest.mark.attack("sandbox state leaks between runs")
async def test_new_sandbox_starts_empty(kept: WasmSandbox) -> None:
    await run(kept, "open('/tmp/left.txt', 'w').write('x')\nleft_value = 1")

    outcome = await run_once(
        backend("os"), "import os\nos.path.exists('/tmp/left.txt'), 'left_value' in globals()"
    )

    assert [result.data for result in outcome.results] == ["(False, False)"]


@pytest.mark.attack("sandbox escape through the JavaScript bridge")
@pytest.mark.parametrize("module", ["subprocess", "shutil", "ctypes", "_socket"])
async def test_unlisted_import_fails(kept: WasmSandbox, module: str) -> None:
    outcome = await run(kept, f"import {module}")

    assert outcome.error is not None
    assert outcome.error.name == "ImportError"
    assert f"importing {module!r} is not allowed" in outcome.error.value


@pytest.mark.legitimate("sandbox escape through the JavaScript bridge")
async def test_listed_imports_work(kept: WasmSandbox) -> None:
    code = (
        "import json, math, re, datetime, statistics, random, decimal, fractions, collections\n"
        "json.dumps([statistics.mean([1, 2, 3]), math.floor(2.5)]), "
        "datetime.datetime.strptime('2024-05-01', '%Y-%m-%d').year"
    )

    outcome = await run(kept, code)

    assert outcome.error is None
    assert [result.data for result in outcome.results] == ["('[2, 2]', 2024)"]


@pytest.mark.parametrize(
    "code",
    [
        "import js",
        "from pyodide.ffi import create_proxy",
        "import pyodide_js",
        "import _pyodide",
        "import micropip",
        "__import__('js')",
        "import importlib\nimportlib.import_module('js')",
        "import importlib\nimportlib.import_module('pyodide.code')",
        "import sys\nsys.modules['js']",
        "import sys\nsys.modules['pyodide_js']",
    ],
)
@pytest.mark.attack("sandbox escape through the JavaScript bridge")
async def test_javascript_bridge_is_unreachable(kept: WasmSandbox, code: str) -> None:
    outcome = await run(kept, code)

    assert outcome.error is not None
    assert outcome.error.name in ("ImportError", "ModuleNotFoundError", "KeyError")


@pytest.mark.attack("sandbox network escape")
async def test_bridge_fetch_reaches_no_listener(kept: WasmSandbox, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    outcome = await run(kept, f"import js\njs.fetch('http://127.0.0.1:{port}/')")
    # A second run lets Node's event loop carry out anything the first one queued.
    await run(kept, "None")

    assert outcome.error is not None
    assert not accepted(listener)


@pytest.mark.attack("sandbox network escape")
async def test_socket_reaches_no_listener(kept: WasmSandbox, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    outcome = await run(kept, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
    await run(kept, "None")

    assert outcome.error is not None
    # Refused by the network containment, not stopped earlier by a missing module or codec.
    assert outcome.error.name == "PermissionError", f"{outcome.error.name}: {outcome.error.value}"
    assert not accepted(listener)


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_host_environment_is_not_visible(kept: WasmSandbox) -> None:
    outcome = await run(
        kept, f"import os\nos.environ.get({CANARY_VARIABLE!r}), {CANARY_VALUE!r} in str(os.environ)"
    )

    assert [result.data for result in outcome.results] == ["(None, False)"]


@pytest.mark.attack("sandbox reads host files")
@pytest.mark.parametrize("target", ["canary", "/etc/shadow"])
async def test_host_files_are_not_readable(kept: WasmSandbox, canary: Path, target: str) -> None:
    path = str(canary) if target == "canary" else target

    outcome = await run(kept, f"open({path!r}).read()")

    assert outcome.error is not None
    assert outcome.error.name == "FileNotFoundError"


@pytest.mark.attack("sandbox escape through the JavaScript bridge")
async def test_child_processes_are_denied(kept: WasmSandbox, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    outcome = await run(kept, f"import os\nos.system('touch {marker}')")

    assert outcome.error is not None
    assert not marker.exists()


@pytest.mark.attack("sandbox resource exhaustion")
async def test_infinite_loop_stops_at_timeout() -> None:
    sandbox_limits = limits(timeout_seconds=2.0)
    started = time.monotonic()

    outcome = await run_once(backend(), "while True:\n    pass", sandbox_limits=sandbox_limits)

    assert outcome.stopped == "timeout"
    assert outcome.exit_code is None
    # The run's own clock starts after Pyodide has loaded.
    assert outcome.seconds < sandbox_limits.timeout_seconds + 1
    assert time.monotonic() - started < 60


async def test_stopped_sandbox_refuses_more_runs() -> None:
    sandbox = await backend().create(limits(timeout_seconds=1.0), TAG)
    try:
        await run(sandbox, "while True:\n    pass")

        with pytest.raises(Exception, match="interpreter is gone"):
            await run(sandbox, "1")
    finally:
        await sandbox.aclose()
        await sandbox.aclose()


@pytest.mark.attack("sandbox resource exhaustion")
async def test_memory_bomb_is_stopped() -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))"

    outcome = await run_once(backend(), code)

    stopped_by_memory = outcome.stopped == "memory" or (
        outcome.error is not None and outcome.error.name == "MemoryError"
    )
    assert stopped_by_memory
    assert outcome.stopped != "timeout"


@pytest.mark.attack("sandbox resource exhaustion")
async def test_output_cap_stops_print_loop() -> None:
    rss_before = psutil.Process().memory_info().rss

    outcome = await run_once(backend(), "while True:\n    print('x' * 10000)")

    assert outcome.output_capped
    assert outcome.stopped == "output_cap"
    assert len(outcome.stdout.encode()) <= TEST_LIMITS.max_output_bytes
    assert psutil.Process().memory_info().rss - rss_before < 64 * 1024 * 1024


@pytest.mark.attack("code run unsandboxed")
async def test_missing_pyodide_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="make install") as caught:
        await backend(pyodide_dir=str(tmp_path)).create(TEST_LIMITS, TAG)

    assert "pyodide.mjs is missing" in caught.value.missing


@pytest.mark.attack("code run unsandboxed")
async def test_missing_node_is_unavailable() -> None:
    with pytest.raises(SandboxUnavailable, match=r"Node\.js") as caught:
        await backend(node="no-such-node-program").check()

    assert "was not found on PATH" in caught.value.missing


# Python introspection can still reach a JavaScript object that Pyodide keeps (its import hook's
# table of JavaScript modules); the layers under Python must hold even then.
REACH_PYODIDE_API = """
def find_js_modules(cls=object, seen=set()):
    for sub in type.__subclasses__(cls) if isinstance(cls, type) else []:
        if sub in seen:
            continue
        seen.add(sub)
        for attr in list(vars(sub).values()):
            finder = getattr(attr, "__globals__", {}).get("jsfinder")
            if finder is not None:
                return finder.jsproxies
        found = find_js_modules(sub, seen)
        if found is not None:
            return found
    return None

api = find_js_modules()["pyodide_js"]
"""


@pytest.mark.parametrize(
    "call",
    [
        "api.useNodeSockFS()",
        "api._api.initializeNodeSockFS()",
        "api.mountNodeFS('/host', '/')",
        "api._api.loadScript('data:text/javascript,globalThis.reached = 1')",
        "api.constructor.constructor('return 1')()",
    ],
)
@pytest.mark.attack("sandbox escape through the JavaScript bridge")
async def test_javascript_reached_by_introspection_is_locked(kept: WasmSandbox, call: str) -> None:
    outcome = await run(kept, REACH_PYODIDE_API + call)

    assert outcome.error is not None
    assert outcome.error.name == "JsException", outcome.error.traceback
