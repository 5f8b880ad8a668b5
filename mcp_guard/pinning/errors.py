"""The errors of the pinning package, rooted at `GuardError`.

GuardError
└── PinError              a pin cannot be stored, read or changed
    ├── PinStoreError         the pin database cannot be opened, read or written
    └── PinNotPending         no pending definition matches an approve or reject
"""

from __future__ import annotations

from pathlib import Path

from mcp_guard.errors import GuardError


class PinError(GuardError):
    """A pin cannot be stored, read or changed."""


class PinStoreError(PinError):
    """The pin database cannot be opened, read or written.

    A caller should treat it as "not approved" and withhold the tools it cannot
    check rather than export them unpinned.

    Attributes:
        path: The database file.
        problem: What failed, without row contents.
        fix: What the operator can do about it.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"The pin store {path} cannot be used: {problem}. {fix}")


class PinNotPending(PinError):
    """An approve or reject found no pending definition, or not the one expected.

    Attributes:
        server: The server id.
        tool: The tool's name on its server.
        expected_hash: The hash the operator reviewed, if given.
        pending_hash: The hash pending now, or None when nothing is pending.
    """

    def __init__(self, server: str, tool: str, expected_hash: str | None, pending_hash: str | None) -> None:
        self.server = server
        self.tool = tool
        self.expected_hash = expected_hash
        self.pending_hash = pending_hash
        if pending_hash is None:
            message = (
                f"Tool {tool!r} of server {server!r} has no definition waiting for review; "
                "`mcp-guard pins list` shows every pin."
            )
        else:
            message = (
                f"The pending definition of tool {tool!r} of server {server!r} is {pending_hash}, "
                f"not {expected_hash}: it changed after it was reviewed. Run `mcp-guard pins review` again."
            )
        super().__init__(message)
