"""Claude Code's `~/.claude.json`: user-scope servers and the local-scope servers of each folder.

Claude Code keeps user-scope servers (`claude mcp add --scope user`) in the file's top-level
`mcpServers`, and local-scope servers (the default scope of `claude mcp add`) under
`projects["/abs/path"].mcpServers`, keyed by the folder Claude Code runs in. In that folder a
local-scope server replaces a user-scope one of the same name. Reading and parsing the file is
left to `sources.py`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_guard.errors import SetupError
from mcp_guard.locations import CLAUDE_CODE_USER_FILE

USER_SCOPE = "user"
LOCAL_SCOPE = "local"
# How many other folders a message names before it only counts the rest.
MAX_FOLDERS_SHOWN = 5


@dataclass(frozen=True)
class ScopedServers:
    """The servers Claude Code starts in one folder from `~/.claude.json`, with the scope of each."""

    servers: dict[str, Any]
    """The server entries by name: the user-scope ones, then the local-scope ones."""
    scopes: dict[str, str]
    """`user` or `local` for each server, by name."""
    local: bool
    """Whether the folder has local-scope servers, which tie the servers to that folder."""
    notes: tuple[str, ...]
    """Servers of the file left out, and why, for init's summary."""


def is_claude_user_file(path: Path, data: dict[str, Any]) -> bool:
    """Return whether `data` looks like `~/.claude.json`: by its name, or by its `projects` object."""
    return path.name == CLAUDE_CODE_USER_FILE or isinstance(data.get("projects"), dict)


def servers_for_folder(path: Path, data: dict[str, Any], folder: Path) -> ScopedServers:
    """Return the servers Claude Code starts in `folder`: user scope, and that folder's local scope.

    Raises:
        SetupError: A server object is malformed, or the file has no server for `folder`. When
            other folders have local-scope servers, the message names them.
    """
    user = _server_object(path, data.get("mcpServers"), "mcpServers")
    key, entry = _project_entry(data, folder)
    local = (
        {} if key is None else _server_object(path, entry.get("mcpServers"), f"projects[{key!r}].mcpServers")
    )
    others = [name for name in project_folders_with_servers(data) if name != key]
    if not user and not local:
        raise SetupError(str(path), [_nothing_for_folder(path, folder, others)])
    notes = [
        f"the user-scope server {name!r} is not imported, because the local-scope server of that name "
        "replaces it in this folder, as in Claude Code"
        for name in user
        if name in local
    ]
    if others:
        notes.append(
            f"local-scope servers of other folders are not imported ({_folder_list(others)}); run init "
            "from that folder to import them"
        )
    scopes = {name: USER_SCOPE for name in user} | {name: LOCAL_SCOPE for name in local}
    return ScopedServers(servers={**user, **local}, scopes=scopes, local=bool(local), notes=tuple(notes))


def project_folders_with_servers(data: dict[str, Any]) -> list[str]:
    """Return the folders under `projects` that have at least one local-scope server."""
    projects = data.get("projects")
    if not isinstance(projects, dict):
        return []
    return [
        str(name)
        for name, entry in projects.items()
        if isinstance(entry, dict) and isinstance(entry.get("mcpServers"), dict) and entry["mcpServers"]
    ]


def _server_object(path: Path, servers: Any, key: str) -> dict[str, Any]:
    if servers is None:
        return {}
    if not isinstance(servers, dict):
        raise SetupError(str(path), [f"{key} must be an object of server entries by name"])
    return servers


def _project_entry(data: dict[str, Any], folder: Path) -> tuple[str | None, dict[str, Any]]:
    """Return the key and entry of `folder` under `projects`, comparing paths with symlinks resolved."""
    projects = data.get("projects")
    if not isinstance(projects, dict):
        return None, {}
    target = os.path.realpath(folder)
    for name, entry in projects.items():
        if isinstance(entry, dict) and os.path.realpath(str(name)) == target:
            return str(name), entry
    return None, {}


def _nothing_for_folder(path: Path, folder: Path, others: list[str]) -> str:
    if not others:
        return (
            f"there are no servers to put mcp-guard in front of: the top-level 'mcpServers' (user scope) "
            f"is empty, and so is the local scope of {folder}"
        )
    example = shlex.quote(others[0])
    return (
        f"there are no user-scope servers (top-level 'mcpServers') and no local-scope servers for the "
        f"current folder {folder}. Local-scope servers are kept for {_folder_list(others)}: run init from "
        f"that folder, for example: cd {example} && mcp-guard init --from {shlex.quote(str(path))}"
    )


def _folder_list(folders: list[str]) -> str:
    listed = ", ".join(folders[:MAX_FOLDERS_SHOWN])
    rest = len(folders) - MAX_FOLDERS_SHOWN
    return f"{listed} and {rest} more" if rest > 0 else listed
