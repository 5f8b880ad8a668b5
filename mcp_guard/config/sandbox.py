"""Frozen models of the policy file's `[sandbox]` section: the `run_code` tool and its backend.

The section is optional: without it the gateway exports no `run_code` tool. With
it, `run_code` is one more tool of a built-in server named `sandbox`, so rules
grant it, limit it and put it under approval like any downstream tool. How code
is run is left to `mcp_guard.sandbox`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from mcp_guard.config.rules import ENV_VAR_PATTERN
from mcp_guard.config.rules import SANDBOX_SERVER_ID as SANDBOX_SERVER_ID

DEFAULT_TOOL_NAME = "run_code"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CPU_SECONDS = 30
DEFAULT_MEMORY_MB = 512
DEFAULT_MAX_PROCESSES = 64
DEFAULT_MAX_FILE_MB = 64
DEFAULT_MAX_OUTPUT_BYTES = 256 * 1024
DEFAULT_MAX_CODE_BYTES = 100_000
DEFAULT_SESSION_IDLE_SECONDS = 600.0
DEFAULT_MAX_SESSION_SANDBOXES = 8
DEFAULT_E2B_LIFETIME_SECONDS = 300
# A host name or IP address, optionally with a leading "*." for subdomains; no scheme, path or port.
HOST_PATTERN = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^[0-9a-fA-F:]{2,39}$")

BackendKind = Literal["auto", "local", "docker", "wasm", "e2b"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalSandboxSettings(_Frozen):
    """`[sandbox.local]`: Linux namespaces with bubblewrap, the default without an E2B key."""

    bwrap: str = "bwrap"
    """The bubblewrap program, looked up on PATH."""

    run_as: str = "nobody"
    """Unprivileged host user the sandbox runs as when the gateway runs as root. As root, the
    sandbox's user would map to host root and could read files such as /etc/shadow."""

    python: str = "python3"
    """Python interpreter for Python code: a name looked up in /usr/local/bin, /usr/bin and /bin, or an
    absolute path outside /usr, whose installation folder is then mounted read-only."""

    node: str = "node"
    """Node.js for JavaScript code, found like `python`; JavaScript is offered only when it is found."""


class DockerSandboxSettings(_Frozen):
    """`[sandbox.docker]`: a container per run, through the Docker API (Docker or Podman)."""

    base_url: str | None = None
    """Docker API address, for example "unix:///run/podman/podman.sock"; defaults to DOCKER_HOST,
    then the local Docker socket."""

    image: Annotated[str, Field(min_length=1)] = "mcp-guard-sandbox:latest"
    """Image with python3 at /usr/bin/python3 (and sh); it must already exist on the Docker host."""

    user: Annotated[str, Field(pattern=r"^[0-9]+(:[0-9]+)?$")] = "65534:65534"
    """Numeric user (and group) the code runs as; never root."""

    runtime: str | None = None
    """OCI runtime to ask for, for example "runc"; None uses the daemon's default."""

    cpus: Annotated[float, Field(gt=0, le=64)] = 1.0
    """CPU quota of a container, in CPUs."""


class WasmSandboxSettings(_Frozen):
    """`[sandbox.wasm]`: Python in Pyodide (WebAssembly), run by Node.js under its permission model."""

    node: str = "node"
    """Node.js 20 or later, looked up on PATH."""

    pyodide_dir: str | None = None
    """Folder of the npm `pyodide` package; relative paths are resolved against the policy file.
    None uses the copy `make install` puts under the gateway's installation."""

    allowed_imports: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = [
        "math",
        "json",
        "re",
        "datetime",
        "collections",
        "itertools",
        "functools",
        "statistics",
        "random",
        "string",
        "decimal",
        "fractions",
    ]
    """Top-level modules the code may import; any other import fails."""


class E2BSandboxSettings(_Frozen):
    """`[sandbox.e2b]`: E2B cloud sandboxes through `e2b-code-interpreter`."""

    api_key_from: Annotated[str, Field(pattern=ENV_VAR_PATTERN)] = "E2B_API_KEY"
    """Environment variable holding the E2B API key; the key itself never goes in this file."""

    domain: str | None = None
    """E2B domain for a self-hosted deployment; None uses E2B's own."""

    api_url: Annotated[str | None, Field(pattern=r"^https?://[^\s@]+$")] = None
    """Control-plane URL, for self-hosted E2B (or a local stand-in); None derives it from `domain`."""

    sandbox_url: Annotated[str | None, Field(pattern=r"^https?://[^\s@]+$")] = None
    """URL of the sandboxes' own API, for self-hosted E2B (or a local stand-in)."""

    template: str | None = None
    """Sandbox template; None uses the code interpreter's default."""

    lifetime_seconds: Annotated[int, Field(ge=10, le=86_400)] = DEFAULT_E2B_LIFETIME_SECONDS
    """Maximum lifetime of a sandbox, after which E2B kills it even if the gateway could not."""


class SandboxSettings(_Frozen):
    """`[sandbox]`: the `run_code` tool, its limits and the backend that runs the code."""

    backend: BackendKind = "auto"
    """The backend that runs code. "auto" is "e2b" when the variable named by `e2b.api_key_from` is set, and
    "local" otherwise. A backend that cannot run fails every call; there is no fallback."""

    tool_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] = DEFAULT_TOOL_NAME
    """Name of the exported tool."""

    timeout_seconds: Annotated[float, Field(gt=0, le=3_600)] = DEFAULT_TIMEOUT_SECONDS
    """Wall-clock time one run may take."""

    cpu_seconds: Annotated[int, Field(ge=1, le=3_600)] = DEFAULT_CPU_SECONDS
    """CPU time one run may use."""

    memory_mb: Annotated[int, Field(ge=32, le=65_536)] = DEFAULT_MEMORY_MB
    """Memory the sandbox may use, in MiB."""

    max_processes: Annotated[int, Field(ge=1, le=4_096)] = DEFAULT_MAX_PROCESSES
    """Processes and threads the sandbox may have at once."""

    max_file_mb: Annotated[int, Field(ge=1, le=65_536)] = DEFAULT_MAX_FILE_MB
    """Size of the workspace the code may write to, in MiB."""

    max_output_bytes: Annotated[int, Field(ge=1_024, le=64 * 1024 * 1024)] = DEFAULT_MAX_OUTPUT_BYTES
    """Bytes of stdout and stderr together one run may produce; the code is stopped at the cap."""

    max_code_bytes: Annotated[int, Field(ge=1, le=10 * 1024 * 1024)] = DEFAULT_MAX_CODE_BYTES
    """Largest `code` argument accepted, in UTF-8 bytes."""

    allowed_hosts: list[str] = []
    """Hosts the code may connect to. Empty (the default) means no network at all. Only the e2b
    backend can filter by host; the others refuse to start with a non-empty list."""

    session_sandboxes: StrictBool = False
    """Keep one sandbox per client session, so files persist between the session's runs. Off by
    default: every run gets a fresh sandbox."""

    session_idle_seconds: Annotated[float, Field(gt=0, le=86_400)] = DEFAULT_SESSION_IDLE_SECONDS
    """A session's sandbox is destroyed after this long without a run (and when the session ends)."""

    max_session_sandboxes: Annotated[int, Field(ge=1, le=1_000)] = DEFAULT_MAX_SESSION_SANDBOXES
    """Session sandboxes alive at once; a new session beyond this is refused until one is freed."""

    local: LocalSandboxSettings = LocalSandboxSettings()
    docker: DockerSandboxSettings = DockerSandboxSettings()
    wasm: WasmSandboxSettings = WasmSandboxSettings()
    e2b: E2BSandboxSettings = E2BSandboxSettings()

    @field_validator("tool_name")
    @classmethod
    def _tool_name_has_no_separator(cls, name: str) -> str:
        if "__" in name:
            raise ValueError(
                f"tool_name {name!r} contains '__', which downstream tools' exported names use; "
                'choose a name without it, such as "run_code"'
            )
        return name

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not HOST_PATTERN.match(host):
                raise ValueError(
                    f"allowed host {host!r} is not a host name or IP address; write it without "
                    'scheme, port or path, for example "pypi.org" or "*.example.com"'
                )
        return hosts

    @model_validator(mode="after")
    def _hosts_need_filtering_backend(self) -> SandboxSettings:
        if self.allowed_hosts and self.backend not in ("e2b", "auto"):
            raise ValueError(
                f"allowed_hosts is set but the {self.backend!r} backend cannot filter network traffic by "
                'host, so its sandboxes have no network at all; use backend = "e2b", or remove allowed_hosts'
            )
        return self

    @model_validator(mode="after")
    def _sessions_outlive_no_e2b_sandbox(self) -> SandboxSettings:
        if (
            self.backend == "e2b"
            and self.session_sandboxes
            and self.session_idle_seconds > self.e2b.lifetime_seconds
        ):
            raise ValueError(
                f"session_idle_seconds ({self.session_idle_seconds:g}) is longer than e2b.lifetime_seconds "
                f"({self.e2b.lifetime_seconds}), after which E2B ends a session's sandbox anyway; lower "
                "session_idle_seconds or raise e2b.lifetime_seconds"
            )
        return self

    def chosen_backend(self, environ: dict[str, str] | None) -> Literal["local", "docker", "wasm", "e2b"]:
        """Return the backend that runs code: `backend`, with "auto" resolved against `environ`."""
        if self.backend != "auto":
            return self.backend
        return "e2b" if environ and environ.get(self.e2b.api_key_from) else "local"
