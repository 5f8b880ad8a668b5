"""The exceptions mcp-guard raises, all rooted at `GuardError`.

Each error carries the values it is about as attributes and formats its own
message: what failed, on which value, and what to do next. Errors from
dependencies (the MCP client, aiosqlite, e2b, docker) are translated into these at the
one module that talks to that dependency, so the rest of the gateway handles a
single tree. `_mcp_error` in `gateway/server.py` turns any of them into the error the MCP client receives.

    GuardError
    ├── ConfigError               the policy file is invalid; nothing starts
    ├── DownstreamError           a downstream server could not serve a request
    │   ├── DownstreamUnavailable     not connected (starting, restarting, failed to start)
    │   ├── DownstreamCrashed         the connection closed while a request was in flight
    │   ├── DownstreamTimeout         no response within the configured time
    │   ├── DownstreamRejected        the server responded with a JSON-RPC error (passed on as is)
    │   └── DownstreamProtocolError   the server responded with an invalid or unsupported result
    ├── NotFoundError             no exported tool, prompt or resource has that name or URI
    ├── SetupError                `mcp-guard init` cannot go on; nothing was written
    ├── AuditError                the audit trail cannot be written or read
    │   ├── AuditUnavailable          the store cannot be written, so calls are denied
    │   └── AuditCorrupted            the hash chain does not verify
    └── SandboxError              run_code could not run the code (the code's own errors are results)
        ├── SandboxUnavailable        the configured backend cannot run here; nothing ran
        └── SandboxFailed             the sandbox failed while creating or running
"""

from __future__ import annotations

from collections.abc import Sequence


class GuardError(Exception):
    """Base class of every error mcp-guard raises on purpose."""


class ConfigError(GuardError):
    """The policy file cannot be used; every problem found is listed.

    Attributes:
        source: The file (or other source) the configuration came from.
        problems: One line per problem, each naming the key path, the bad value and the fix.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.report("nothing was started"))

    def report(self, consequence: str | None) -> str:
        """Return the message with another consequence, or none (for commands that start nothing)."""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        after = f", {consequence}" if consequence else ""
        return f"{self.source}: {count} {noun} found{after}:\n{lines}"


class DownstreamError(GuardError):
    """A downstream server could not serve a request.

    Attributes:
        server: The configured id of the downstream server.
    """

    def __init__(self, server: str, message: str) -> None:
        self.server = server
        super().__init__(message)


class DownstreamUnavailable(DownstreamError):
    """The downstream server is not connected right now."""

    def __init__(self, server: str, state: str) -> None:
        self.state = state
        super().__init__(
            server,
            f"Server {server!r} is not available ({state}). "
            "The gateway reconnects on its own; retry in a few seconds.",
        )


class DownstreamCrashed(DownstreamError):
    """The connection to the downstream server closed while a request was in flight."""

    def __init__(self, server: str) -> None:
        super().__init__(
            server,
            f"Server {server!r} closed its connection during the request. "
            "The gateway is restarting it; retry in a few seconds.",
        )


class DownstreamTimeout(DownstreamError):
    """The downstream server did not finish a request within the configured time."""

    def __init__(self, server: str, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            server,
            f"Server {server!r} did not finish the request within {seconds:g} s. "
            f"Retry, or raise servers.{server}.call_timeout_seconds in the policy file.",
        )


class DownstreamRejected(DownstreamError):
    """The downstream server responded to the request with a JSON-RPC error.

    The gateway passes the code and message on unchanged: they are the
    server's response to the client, not the gateway's.

    Attributes:
        code: The JSON-RPC error code.
        error_message: The server's error message.
        data: The error's `data` member, if any.
    """

    def __init__(self, server: str, code: int, error_message: str, data: object = None) -> None:
        self.code = code
        self.error_message = error_message
        self.data = data
        super().__init__(server, f"Server {server!r} rejected the request: {error_message} (code {code}).")


class DownstreamProtocolError(DownstreamError):
    """The downstream server responded with something the gateway cannot pass on."""

    def __init__(self, server: str, detail: str) -> None:
        self.detail = detail
        super().__init__(server, f"Server {server!r} returned an invalid result: {detail}.")


class NotFoundError(GuardError):
    """No exported tool, prompt or resource has the requested name or URI.

    Hidden and never-existing names give the same error, so a caller cannot
    probe for what exists.

    Attributes:
        kind: "tool", "prompt" or "resource".
        name: The requested name or URI, as received.
        reason: A sentence on why, given only where it reveals nothing the caller may not know.
    """

    def __init__(self, kind: str, name: str, reason: str | None = None) -> None:
        self.kind = kind
        self.name = name
        shown = name if len(name) <= 200 else name[:200] + "..."
        super().__init__(f"Unknown {kind}: {shown!r}" + (f". {reason}" if reason else ""))


class SetupError(GuardError):
    """`mcp-guard init` cannot go on; nothing was written.

    Attributes:
        source: The file the problems are about.
        problems: One line per problem, each saying what is wrong and how to fix it.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: mcp-guard init stopped, nothing was written:\n{lines}")


class ListenFailed(GuardError):
    """The HTTP gateway cannot listen on its address; the message names the address and the fix."""


class AuditError(GuardError):
    """The audit trail cannot be written or read."""


class AuditUnavailable(AuditError):
    """The audit store cannot be written, so the call is denied (fail closed).

    Attributes:
        reason: What went wrong, without secrets (for example "database is read-only").
        fix: What to do about it, when the default advice (fix the state directory) does not fit.
    """

    def __init__(self, reason: str, *, fix: str | None = None) -> None:
        self.reason = reason
        self.fix = fix
        fix = fix or (
            'Fix the state directory, or set audit.on_failure = "proceed" in the policy file '
            "to run without an audit trail."
        )
        super().__init__(f"The audit trail cannot be written ({reason}), so the call was denied. {fix}")


class AuditCorrupted(AuditError):
    """The audit hash chain does not verify.

    Attributes:
        row_id: The first row that fails verification, or None when rows are missing at the end.
        detail: What does not match.
    """

    def __init__(self, row_id: int | None, detail: str) -> None:
        self.row_id = row_id
        self.detail = detail
        where = f"at row {row_id}" if row_id is not None else "at the end of the trail"
        super().__init__(f"The audit trail is broken {where}: {detail}.")


class SandboxError(GuardError):
    """run_code could not run the code. Errors raised by the code itself are part of its result.

    Attributes:
        backend: The configured sandbox backend ("local", "docker", "wasm", "e2b").
    """

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(message)


class SandboxUnavailable(SandboxError):
    """The configured sandbox backend cannot run code here, so nothing ran (never a fallback).

    Attributes:
        missing: What is missing, for example "bubblewrap (bwrap) is not installed".
        fix: What the operator can do about it.
    """

    def __init__(self, backend: str, missing: str, fix: str) -> None:
        self.missing = missing
        self.fix = fix
        super().__init__(
            backend, f"The {backend!r} sandbox cannot run code here: {missing}. Nothing was run. {fix}"
        )


class SandboxFailed(SandboxError):
    """The sandbox failed while being created or while running the code.

    Attributes:
        reason: What went wrong, without secrets.
    """

    def __init__(self, backend: str, reason: str) -> None:
        self.reason = reason
        super().__init__(backend, f"The {backend!r} sandbox failed: {reason}.")
