"""The docker backend against a real Podman API: containment, limits, results and clean-up.

A session fixture starts `podman system service` on a socket of its own and
builds a small image from this machine's Python (`docker/build_image.py`),
cached by a tag that changes with the script and the Python version. Network
tests aim only at a listener the test opens on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import psutil
import pytest
from sandbox_support import TEST_LIMITS, limits, run_once

from mcp_guard.config.sandbox import DockerSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxUnavailable
from mcp_guard.sandbox.base import CodeRun, OutputCapture, SandboxTag
from mcp_guard.sandbox.docker import LABEL, LABEL_CLIENT, DockerBackend, DockerSandbox, podman_socket_url

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed (apt-get install podman)"
    ),
]

BUILD_SCRIPT = Path(__file__).parent / "docker" / "build_image.py"
HOST_PYTHON = "/usr/bin/python3"
# A stopped run may take this much longer than its time limit.
STOP_MARGIN_SECONDS = 1.0
# Bounds the wait for the Podman API to accept connections on its socket.
SERVICE_START_SECONDS = 30.0


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def image() -> str:
    """The test image, built once and reused while the build script and host Python stay the same."""
    version = subprocess.run(
        [HOST_PYTHON, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout
    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes() + version.encode()).hexdigest()[:12]
    tag = f"localhost/mcp-guard-sandbox-test:{digest}"
    if podman("image", "exists", tag).returncode != 0:
        subprocess.run([HOST_PYTHON, str(BUILD_SCRIPT), "--tool", "podman", "--tag", tag], check=True)
    return tag


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a Podman API service this fixture starts and stops (by its PID)."""
    path = tmp_path_factory.mktemp("podman") / "podman.sock"
    url = f"unix://{path}"
    # The service's runtime writes files such as `oom` into its working folder, so it gets its own.
    service = subprocess.Popen(
        ["podman", "--runtime", "runc", "system", "service", "--time=0", url],
        cwd=path.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_socket(path, service)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _wait_for_socket(path: Path, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVICE_START_SECONDS
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"podman system service exited with status {service.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                time.sleep(0.05)
                continue
            return
    pytest.fail(f"podman system service did not listen on {path} within {SERVICE_START_SECONDS:g} s")


def settings(api_url: str, image: str, **changes: object) -> SandboxSettings:
    docker_settings = DockerSandboxSettings(base_url=api_url, image=image, runtime="runc")
    return SandboxSettings(backend="docker", docker=docker_settings.model_copy(update=changes))


@pytest.fixture(scope="session")
def backend(api_url: str, image: str) -> Iterator[DockerBackend]:
    # One backend for the session, so its probe container runs once; it keeps no event-loop state.
    backend = DockerBackend(settings(api_url, image), {})
    yield backend
    anyio.run(backend.aclose)


@pytest.fixture(scope="session")
def api(api_url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=api_url)
    yield client
    client.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        yield server


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


def session_tag(name: str) -> SandboxTag:
    return SandboxTag(client="test", call_id=name, session=name)


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_python_prints_and_returns_its_last_value(backend: DockerBackend) -> None:
    outcome = await run_once(backend, "print('hello')\n6 * 7")

    assert outcome.stdout == "hello\n"
    assert outcome.stderr == ""
    assert [result.data for result in outcome.results] == ["42"]
    assert outcome.exit_code == 0


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_python_error_comes_back_with_its_traceback(backend: DockerBackend) -> None:
    outcome = await run_once(backend, "def f():\n    return 1 / 0\nf()")

    assert outcome.error is not None
    assert outcome.error.name == "ZeroDivisionError"
    assert 'File "<code>", line 2, in f' in outcome.error.traceback
    assert outcome.exit_code == 1


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_shell_runs_with_its_exit_status(backend: DockerBackend) -> None:
    outcome = await run_once(backend, "echo $((6 * 7)); echo oops >&2; exit 3", "shell")

    assert outcome.stdout == "42\n"
    assert outcome.stderr == "oops\n"
    assert outcome.exit_code == 3


async def test_javascript_needs_node_in_the_image(backend: DockerBackend) -> None:
    await backend.check()

    assert backend.languages == frozenset(("python", "shell"))


@pytest.mark.attack("sandbox network escape")
async def test_connecting_to_a_host_listener_fails(backend: DockerBackend, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"

    outcome = await run_once(backend, code)

    assert outcome.error is not None
    assert outcome.error.name in {"ConnectionRefusedError", "OSError", "TimeoutError"}
    with pytest.raises(TimeoutError):
        listener.accept()


@pytest.mark.attack("sandbox network escape")
async def test_name_resolution_fails(backend: DockerBackend) -> None:
    outcome = await run_once(backend, "import socket\nsocket.getaddrinfo('mcp-guard.test', 80)")

    assert outcome.error is not None
    assert outcome.error.name == "gaierror"


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_gateway_environment_is_not_visible(
    backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("MCP_GUARD_TEST_SECRET", canary)

    python = await run_once(backend, "import os\n'MCP_GUARD_TEST_SECRET' in os.environ")
    shell = await run_once(backend, "env; cat /proc/1/environ", "shell")

    assert python.results[0].data == "False"
    assert canary not in shell.stdout


@pytest.mark.attack("sandbox reads host files")
async def test_root_only_host_file_is_unreadable(backend: DockerBackend, tmp_path: Path) -> None:
    canary = tmp_path / f"canary-{uuid.uuid4().hex}"
    canary.write_text("secret", encoding="utf-8")
    canary.chmod(0o600)

    outcome = await run_once(backend, f"open({str(canary)!r}).read()")

    assert outcome.error is not None
    assert outcome.error.name in {"FileNotFoundError", "PermissionError"}


@pytest.mark.attack("sandbox reads host files")
async def test_etc_shadow_is_not_readable(backend: DockerBackend) -> None:
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
async def test_runaway_code_is_stopped_within_the_time_limit(backend: DockerBackend, code: str) -> None:
    sandbox_limits = limits(timeout_seconds=2.0)
    sandbox = await backend.create(sandbox_limits, session_tag("runaway"))
    try:
        start = time.monotonic()
        outcome = await sandbox.run(CodeRun("python", code), OutputCapture(1024))
        seconds = elapsed_since(start)
        after = await sandbox.run(CodeRun("python", "'still serving'"), OutputCapture(1024))
    finally:
        await sandbox.aclose()

    assert seconds < sandbox_limits.timeout_seconds + STOP_MARGIN_SECONDS
    assert outcome.exit_code != 0
    assert after.results[0].data == "'still serving'"


@pytest.mark.attack("sandbox resource exhaustion")
async def test_timed_out_run_reports_timeout(backend: DockerBackend) -> None:
    outcome = await run_once(
        backend, "import time\ntime.sleep(1000)", sandbox_limits=limits(timeout_seconds=1.0)
    )

    assert outcome.stopped == "timeout"
    assert outcome.exit_code is None


@pytest.mark.attack("sandbox resource exhaustion")
async def test_endless_output_stops_at_cap(backend: DockerBackend) -> None:
    gateway = psutil.Process()
    before = gateway.memory_info().rss
    start = time.monotonic()

    outcome = await run_once(backend, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")

    assert outcome.output_capped
    assert outcome.stopped == "output_cap"
    assert len(outcome.stdout.encode()) <= TEST_LIMITS.max_output_bytes
    assert elapsed_since(start) < TEST_LIMITS.timeout_seconds
    assert gateway.memory_info().rss - before < 50 * 1024 * 1024


@pytest.mark.attack("sandbox reads host files")
async def test_writing_outside_the_workspace_fails(backend: DockerBackend) -> None:
    targets = ["/usr/mcp-guard-test", "/new-file", "/etc/new-file", "/usr/bin/python3"]

    outcome = await run_once(backend, f"failed = 0\n{_each_fails(targets)}\nfailed")

    assert outcome.results[0].data == str(len(targets))


def _each_fails(paths: list[str]) -> str:
    lines = []
    for path in paths:
        lines += ["try:", f"    open({path!r}, 'w')", "except OSError:", "    failed += 1"]
    return "\n".join(lines)


@pytest.mark.attack("sandbox resource exhaustion")
async def test_workspace_size_is_limited(backend: DockerBackend) -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)"

    outcome = await run_once(backend, code)

    assert outcome.error is not None
    assert outcome.error.name == "OSError"


@pytest.mark.attack("sandbox state leaks between runs")
async def test_file_is_gone_in_next_sandbox(backend: DockerBackend) -> None:
    await run_once(backend, "open('note.txt', 'w').write('left behind')")

    outcome = await run_once(backend, "import os\nos.path.exists('note.txt')")

    assert outcome.results[0].data == "False"


@pytest.mark.attack("sandbox state leaks between runs")
async def test_a_kept_sandbox_keeps_files_between_its_runs_only(backend: DockerBackend) -> None:
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


@pytest.mark.attack("sandbox outlives its run")
async def test_a_double_forked_process_does_not_outlive_its_run(backend: DockerBackend) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "            open('/workspace/alive', 'a').write('x')\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "time.sleep(0.2)\n"
        "os.path.exists('/workspace/alive')"
    )
    # Lists every process but PID 1 (the keeper), this driver and its parent (the prelude).
    others = (
        "import os\n"
        "mine = {1, os.getpid(), os.getppid()}\n"
        "sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in mine)"
    )
    sandbox = await backend.create(TEST_LIMITS, session_tag("double-fork"))
    try:
        first = await sandbox.run(CodeRun("python", code), OutputCapture(1024))
        second = await sandbox.run(CodeRun("python", others), OutputCapture(1024))
    finally:
        await sandbox.aclose()

    assert first.results[0].data == "True"
    assert second.results[0].data == "[]"


@pytest.mark.attack("sandbox reads host files")
async def test_the_container_is_locked_down(backend: DockerBackend, api: docker.DockerClient) -> None:
    sandbox = await backend.create(TEST_LIMITS, session_tag("inspect"))
    try:
        attributes = api.containers.get(sandbox.container_id).attrs
        status = await sandbox.run(
            CodeRun("python", "print(open('/proc/self/status').read())"), OutputCapture(65536)
        )
    finally:
        await sandbox.aclose()
    host = attributes["HostConfig"]
    fields = dict(line.split(":\t", 1) for line in status.stdout.splitlines() if ":\t" in line)

    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == TEST_LIMITS.max_processes
    assert host["Memory"] == TEST_LIMITS.memory_bytes
    assert host["MemorySwap"] == TEST_LIMITS.memory_bytes
    assert attributes["Config"]["User"] == "65534:65534"
    assert attributes["Config"]["Labels"][LABEL] == "1"
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[0] == "65534"


@pytest.mark.attack("code run unsandboxed")
async def test_a_missing_image_is_reported_and_nothing_runs(api_url: str, api: docker.DockerClient) -> None:
    missing = f"localhost/mcp-guard-no-such-image:{uuid.uuid4().hex[:8]}"
    backend = DockerBackend(settings(api_url, missing), {})

    try:
        with pytest.raises(SandboxUnavailable, match="not found") as raised:
            await backend.create(TEST_LIMITS, SandboxTag(client="missing-image", call_id="1"))
    finally:
        await backend.aclose()

    assert "docs/sandbox-docker.md" in str(raised.value)
    assert api.containers.list(all=True, filters={"label": f"{LABEL_CLIENT}=missing-image"}) == []


@pytest.mark.attack("code run unsandboxed")
async def test_a_missing_daemon_is_reported(api_url: str, image: str, tmp_path: Path) -> None:
    backend = DockerBackend(settings(f"unix://{tmp_path}/no-such.sock", image), {})

    with pytest.raises(SandboxUnavailable, match="no Docker API answers") as raised:
        await backend.create(TEST_LIMITS, SandboxTag(client="test", call_id="1"))

    assert "podman system service" in str(raised.value)


def test_podman_socket_suggestion_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    rootless = podman_socket_url()
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    assert rootless == "unix:///run/user/1000/podman/podman.sock"
    assert podman_socket_url() == "unix:///run/podman/podman.sock"


@pytest.mark.attack("sandbox network escape")
async def test_allowed_hosts_are_refused_rather_than_ignored(backend: DockerBackend) -> None:
    with pytest.raises(SandboxUnavailable, match="no network"):
        await backend.create(limits(allowed_hosts=("pypi.org",)), SandboxTag(client="test", call_id="1"))


async def test_aclose_removes_the_container(backend: DockerBackend, api: docker.DockerClient) -> None:
    sandbox = await backend.create(TEST_LIMITS, session_tag("close"))

    await sandbox.aclose()
    await sandbox.aclose()

    with pytest.raises(docker.errors.NotFound):
        api.containers.get(sandbox.container_id)


async def test_remove_orphans_removes_only_an_earlier_gateways_sandbox(
    api_url: str, image: str, backend: DockerBackend, api: docker.DockerClient
) -> None:
    # A backend that never closed its sandbox stands for an earlier gateway with this PID.
    earlier = DockerBackend(settings(api_url, image), {})
    left: DockerSandbox = await earlier.create(TEST_LIMITS, session_tag("orphan"))
    current = await backend.create(TEST_LIMITS, session_tag("current"))
    try:
        removed = await backend.remove_orphans()
        current_status = api.containers.get(current.container_id).status
    finally:
        await current.aclose()
        await left.aclose()
        await earlier.aclose()

    assert removed >= 1
    with pytest.raises(docker.errors.NotFound):
        api.containers.get(left.container_id)
    assert current_status == "running"
