"""The one interface every sandbox backend implements, and the values that cross it.

A backend (local bubblewrap, Docker, WASM, E2B) creates sandboxes and runs one
piece of code at a time in them. Everything else lives outside the backends:
choosing the backend, keeping per-session sandboxes, turning a `RunOutcome`
into a tool result (`sandbox/results.py`), policy, limits and audit (the gateway).

The rules every backend keeps, whatever it runs on:

- the code never runs in the gateway's process, and never unsandboxed: a backend
  that cannot run raises `SandboxUnavailable` saying what is missing and how to fix it;
- the sandbox starts with an empty environment and no network unless
  `SandboxLimits.allowed_hosts` lists hosts (a backend that cannot filter by host
  refuses a non-empty list);
- output goes through an `OutputCapture` while it streams, and the backend stops
  the code as soon as `OutputCapture.full` is set, not after the code has finished;
- `Sandbox.aclose` destroys everything the sandbox started, and is safe to call
  twice and under cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import anyio

from mcp_guard.errors import SandboxUnavailable

Language = Literal["python", "shell", "javascript"]
LANGUAGES: tuple[Language, ...] = ("python", "shell", "javascript")

StopReason = Literal["timeout", "output_cap", "memory", "cancelled"]
"""The reason the gateway stopped the code before it finished on its own."""

# Shown in the result where output was cut, so the model can tell that it did not see everything.
OUTPUT_CAP_MARKER = "\n[mcp-guard: output stopped at the {limit}-byte cap; the code was stopped]\n"


@dataclass(frozen=True)
class SandboxLimits:
    """The limits one run (or one session sandbox) is held to."""

    timeout_seconds: float
    """Wall-clock time one run may take, from start to the last byte of output."""
    cpu_seconds: int
    """CPU time one run may use, summed over its processes where the backend can count it."""
    memory_bytes: int
    """Memory the sandbox may use."""
    max_processes: int
    """Processes (and threads) the sandbox may have at once."""
    max_file_bytes: int
    """Total size of the files the code may write (the workspace size), and of any one file."""
    max_output_bytes: int
    """Bytes of stdout and stderr together that one run may produce before it is stopped."""
    allowed_hosts: tuple[str, ...] = ()
    """Hosts the code may connect to; empty means no network at all."""


@dataclass(frozen=True)
class SandboxTag:
    """The owner of a sandbox, recorded where the backend can store it (E2B metadata, container labels)."""

    client: str
    call_id: str
    session: str | None = None


@dataclass(frozen=True)
class CodeRun:
    """One piece of code to run."""

    language: Language
    code: str


@dataclass(frozen=True)
class CodeError:
    """The error the code raised (or a shell's failure), as the language reports it."""

    name: str
    value: str
    traceback: str


@dataclass(frozen=True)
class RichOutput:
    """A displayable value the code produced, such as the value of its last expression."""

    kind: Literal["text", "png"]
    data: str
    """The text itself, or the image as base64."""


@dataclass
class RunOutcome:
    """What one run produced. User-code errors are part of the outcome, never raised."""

    stdout: str
    stderr: str
    exit_code: int | None
    """None when the code was stopped and no exit status exists."""
    seconds: float
    """Sandbox time the run used (wall clock), which cost limits charge."""
    error: CodeError | None = None
    results: list[RichOutput] = field(default_factory=list)
    stopped: StopReason | None = None
    output_capped: bool = False


class OutputCapture:
    """Collects a run's stdout and stderr while they stream, up to a byte cap shared by both.

    A backend feeds every chunk to `add` as it arrives. Once the cap is reached the
    rest is dropped, `full` is set, and the backend must stop the code at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.full = anyio.Event()
        self._used = 0
        self._parts: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

    def add(self, stream: Literal["stdout", "stderr"], data: bytes) -> bool:
        """Keep what fits of `data`; return False once the cap is reached (the code must be stopped)."""
        if self.full.is_set():
            return False
        room = self.limit - self._used
        kept = data[:room]
        self._parts[stream].append(kept)
        self._used += len(kept)
        if len(data) > room or self._used >= self.limit:
            self.full.set()
            return False
        return True

    @property
    def capped(self) -> bool:
        """Whether the cap was reached."""
        return self.full.is_set()

    def text(self, stream: Literal["stdout", "stderr"]) -> str:
        """Return what was kept of `stream`, decoded as UTF-8 (bad bytes replaced)."""
        return b"".join(self._parts[stream]).decode("utf-8", errors="replace")


class Sandbox(Protocol):
    """One live sandbox: fresh for a call, or kept for a session when the policy allows it."""

    async def run(self, run: CodeRun, output: OutputCapture) -> RunOutcome:
        """Run `run.code`, streaming its output into `output`, within the sandbox's limits.

        Raises:
            SandboxFailed: The sandbox itself failed (not the code); the message names the backend.
        """
        ...

    async def aclose(self) -> None:
        """Destroy the sandbox and everything running in it. Safe to call twice and when cancelled."""
        ...


class SandboxBackend(Protocol):
    """Creates sandboxes of one kind."""

    kind: str
    """The backend's name in the policy file: "local", "docker", "wasm" or "e2b"."""
    languages: frozenset[Language]
    """Languages this backend can run."""

    async def check(self) -> None:
        """Make sure the backend can run code here.

        Raises:
            SandboxUnavailable: Something is missing. The message names it and the fix.
        """
        ...

    async def create(self, limits: SandboxLimits, tag: SandboxTag) -> Sandbox:
        """Create a sandbox held to `limits`.

        Raises:
            SandboxUnavailable: The backend cannot run code here.
            SandboxFailed: The sandbox could not be created.
        """
        ...

    async def remove_orphans(self) -> int:
        """Destroy sandboxes an earlier gateway process left behind; return how many. Called at start-up."""
        ...

    async def aclose(self) -> None:
        """Release the backend's own resources (clients, connections)."""
        ...


def reject_allowed_hosts(kind: str, hosts: Sequence[str]) -> None:
    """Raise `SandboxUnavailable` if `hosts` is not empty, for a backend whose sandboxes have no network.

    The backends call it in `check`, so `mcp-guard check` and the gateway's start-up report the
    setting, and in `create`, so no sandbox runs with hosts it would silently not reach.
    """
    if hosts:
        raise SandboxUnavailable(
            kind,
            f"the {kind} sandbox has no network, so it cannot allow the listed hosts",
            'Remove [sandbox] allowed_hosts, or use backend = "e2b", which filters by host.',
        )
