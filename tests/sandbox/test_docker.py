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
import pytest
from containment import ContainmentContract, session_tag
from sandbox_support import TEST_LIMITS, run_once

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


class TestDockerContainment(ContainmentContract):
    # Each of these means the connection failed; which one depends on the container runtime.
    connect_errors = frozenset({"ConnectionRefusedError", "OSError", "TimeoutError"})
    unwritable_paths = ("/usr/mcp-guard-test", "/new-file", "/etc/new-file", "/usr/bin/python3")


@pytest.mark.legitimate("sandbox resource exhaustion")
async def test_shell_runs_with_its_exit_status(backend: DockerBackend) -> None:
    outcome = await run_once(backend, "echo $((6 * 7)); echo oops >&2; exit 3", "shell")

    assert outcome.stdout == "42\n"
    assert outcome.stderr == "oops\n"
    assert outcome.exit_code == 3


async def test_javascript_needs_node_in_the_image(backend: DockerBackend) -> None:
    await backend.check()

    assert backend.languages == frozenset(("python", "shell"))


@pytest.mark.attack("sandbox reads host files")
async def test_root_only_host_file_is_unreadable(backend: DockerBackend, tmp_path: Path) -> None:
    canary = tmp_path / f"canary-{uuid.uuid4().hex}"
    canary.write_text("secret", encoding="utf-8")
    canary.chmod(0o600)

    outcome = await run_once(backend, f"open({str(canary)!r}).read()")

    assert outcome.error is not None
    assert outcome.error.name in {"FileNotFoundError", "PermissionError"}


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
