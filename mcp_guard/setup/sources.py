"""Finding and reading the MCP configuration of an existing client.

Three clients are understood: Claude Desktop (`claude_desktop_config.json`, servers under
`mcpServers`), VS Code (`.vscode/mcp.json`, servers under `servers`, with `inputs`) and Claude
Code (`.mcp.json`, servers under `mcpServers`, and `~/.claude.json`, read by `claude_user.py`).
A path given by the user is recognised by its shape. Each file also gives the project folder its
servers belong to, when it has one. Turning the server entries into policy tables is left to
`importing.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mcp_guard.errors import SetupError
from mcp_guard.locations import (
    CLAUDE_CODE_PROJECT_FILE,
    VSCODE_WORKSPACE_FILE,
    claude_code_user_path,
    claude_desktop_path,
)
from mcp_guard.setup.claude_user import is_claude_user_file, servers_for_folder

ClientKind = Literal["claude-desktop", "vscode", "claude-code"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("claude-desktop", "vscode", "claude-code")
CLIENT_TITLES: dict[ClientKind, str] = {
    "claude-desktop": "Claude Desktop",
    "vscode": "VS Code",
    "claude-code": "Claude Code",
}


@dataclass(frozen=True)
class ClientFile:
    """A parsed client configuration file and the client it belongs to."""

    kind: ClientKind
    path: Path
    data: dict[str, Any]
    """The whole file, as parsed."""
    servers: dict[str, Any]
    """The server entries by the name the client gives them."""
    project: Path | None = None
    """The project or workspace folder the servers belong to, or None for a user-wide file."""
    scopes: dict[str, str] = field(default_factory=dict)
    """The Claude Code scope ("user" or "local") of each server read from `~/.claude.json`, by name."""
    notes: tuple[str, ...] = ()
    """Facts about where the servers came from and what was left behind, for init's summary."""


def read_client_file(
    source: str,
    environ: Mapping[str, str] | None = None,
    *,
    workspace: Path | None = None,
    folder: Path | None = None,
) -> ClientFile:
    """Find and parse the configuration that `source` names: a client kind or a file path.

    Args:
        source: `claude-desktop`, `vscode`, `claude-code`, or the path of a configuration file.
        environ: The environment that locates Claude Desktop's file (default: this process's).
        workspace: The VS Code workspace folder that `${workspaceFolder}` stands for.
        folder: The folder init runs in, which per-project sources are looked up from
            (default: the current working directory).

    Raises:
        SetupError: The file is missing, unreadable, not JSON, or has no server entries, or
            `workspace` is given for a file that is not VS Code's.
    """
    env = os.environ if environ is None else environ
    cwd = (folder or Path.cwd()).absolute()
    if source in CLIENT_KINDS:
        kind: ClientKind | None = source
        path = _default_path(source, env, cwd).absolute()
    else:
        kind = None
        path = cwd / Path(source).expanduser()
    if source == "claude-code" and not path.exists():
        client = _claude_code_without_project_file(path, cwd)
    else:
        client = _read_client_file(path, kind, cwd)
    if workspace is not None:
        client = _with_workspace(client, workspace)
    return client


def _read_client_file(path: Path, kind: ClientKind | None, cwd: Path) -> ClientFile:
    data = parse_client_text(path, _read(path, kind))
    if kind is None:
        kind = _detect(path, data)
    if kind == "claude-code" and is_claude_user_file(path, data):
        return _claude_user_client(path, data, cwd)
    servers = _servers_of(path, data, kind)
    project = _project_of(kind, path)
    client = ClientFile(kind=kind, path=path, data=data, servers=servers, project=project)
    if kind == "claude-code" and project is not None:
        client = replace(client, notes=_servers_left_in_user_file(project))
    return client


def _claude_user_client(path: Path, data: dict[str, Any], cwd: Path) -> ClientFile:
    scoped = servers_for_folder(path, data, cwd)
    return ClientFile(
        kind="claude-code",
        path=path,
        data=data,
        servers=scoped.servers,
        project=cwd if scoped.local else None,
        scopes=scoped.scopes,
        notes=scoped.notes,
    )


def _claude_code_without_project_file(missing: Path, cwd: Path) -> ClientFile:
    """Read the servers of `~/.claude.json` for this folder, as Claude Code does without `.mcp.json`."""
    user_file = claude_code_user_path()
    absent = f"the file does not exist; {_where_to_look('claude-code')}"
    if not user_file.is_file():
        raise SetupError(str(missing), [absent])
    try:
        client = _claude_user_client(user_file, parse_client_text(user_file, _read(user_file, None)), cwd)
    except SetupError as exc:
        raise SetupError(
            str(missing), [absent, *(f"{user_file}: {problem}" for problem in exc.problems)]
        ) from None
    read_instead = (
        f"{cwd} has no {CLAUDE_CODE_PROJECT_FILE}, so init read the servers that Claude Code starts in "
        f"this folder from {user_file}"
    )
    return replace(client, notes=(read_instead, *client.notes))


def _servers_left_in_user_file(project: Path) -> tuple[str, ...]:
    """Name the servers `~/.claude.json` adds in `project`, which a `.mcp.json` import leaves out."""
    user_file = claude_code_user_path()
    try:
        data = parse_client_text(user_file, user_file.read_text(encoding="utf-8-sig"))
        scoped = servers_for_folder(user_file, data, project)
    except (OSError, UnicodeDecodeError, SetupError):
        return ()  # The note is only a hint, so a missing or broken ~/.claude.json is skipped.
    names = ", ".join(f"{name!r} ({scope} scope)" for name, scope in scoped.scopes.items())
    return (
        f"Claude Code also starts the servers that {user_file} keeps for this folder: {names}. This "
        f"policy does not cover them; import them with --from {user_file}",
    )


def _project_of(kind: ClientKind, path: Path) -> Path | None:
    """Return the project folder of a per-project file: `.mcp.json`, or `.vscode/mcp.json`."""
    if kind == "claude-code" and path.name == CLAUDE_CODE_PROJECT_FILE:
        return path.parent
    if kind == "vscode" and path.parent.name == ".vscode":
        return path.parent.parent
    return None


def _with_workspace(client: ClientFile, workspace: Path) -> ClientFile:
    if client.kind != "vscode":
        raise SetupError(
            str(client.path),
            [
                f"--workspace sets VS Code's ${{workspaceFolder}}, but this is a {CLIENT_TITLES[client.kind]} "
                "file; leave --workspace out"
            ],
        )
    folder = workspace.expanduser().absolute()
    if not folder.is_dir():
        raise SetupError(str(folder), ["--workspace must name an existing folder: the one VS Code opens"])
    return replace(client, project=folder)


def _default_path(kind: ClientKind, environ: Mapping[str, str], cwd: Path) -> Path:
    if kind == "claude-desktop":
        return claude_desktop_path(environ)
    if kind == "vscode":
        return cwd / VSCODE_WORKSPACE_FILE
    return cwd / CLAUDE_CODE_PROJECT_FILE


def _read(path: Path, kind: ClientKind | None) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SetupError(str(path), [f"the file does not exist; {_where_to_look(kind)}"]) from None
    except IsADirectoryError:
        raise SetupError(str(path), ["this is a folder; name the configuration file itself"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(str(path), [f"the file cannot be read ({exc}); check its permissions"]) from None


def _where_to_look(kind: ClientKind | None) -> str:
    if kind == "claude-desktop":
        return (
            "open Claude Desktop's Settings > Developer > Edit Config to create it, "
            "or give its path with --from PATH"
        )
    if kind == "vscode":
        return (
            "run init from the workspace folder that contains .vscode/mcp.json, or give the path of "
            "an mcp.json with --from PATH (the command 'MCP: Open User Configuration' opens your "
            "user-profile one)"
        )
    if kind == "claude-code":
        return (
            "run init from the project folder that contains .mcp.json, or give its path with "
            "--from PATH (user-scope and local-scope servers are in ~/.claude.json)"
        )
    return "check the path, or name a client: --from claude-desktop, vscode or claude-code"


def parse_client_text(path: Path, text: str) -> dict[str, Any]:
    """Parse a client file's text as JSON with comments, which must give an object.

    Raises:
        SetupError: The text is not valid JSON, or not an object.
    """
    # VS Code reads its JSON files with comments and trailing commas, so every file is read that
    # way: strict JSON parses the same either way.
    try:
        data = json.loads(strip_json_comments(text))
    except json.JSONDecodeError as exc:
        raise SetupError(
            str(path),
            [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; fix the file and retry"],
        ) from None
    if not isinstance(data, dict):
        raise SetupError(str(path), ["the file does not contain a JSON object; is it an MCP configuration?"])
    return data


def _servers_of(path: Path, data: dict[str, Any], kind: ClientKind) -> dict[str, Any]:
    """Return the server entries of a file of the client `kind`."""
    if kind == "vscode":
        key, container = "servers", data
        nested = data.get("mcp")
        if "servers" not in data and isinstance(nested, dict):
            key, container = "mcp.servers", nested  # the older form, inside settings.json
        servers = container.get("servers")
    else:
        key, servers = "mcpServers", data.get("mcpServers")
    if servers is None:
        raise SetupError(
            str(path),
            [
                f"no {key!r} object found, so this is not a {CLIENT_TITLES[kind]} MCP configuration; "
                "name the right file with --from PATH"
            ],
        )
    if not isinstance(servers, dict):
        raise SetupError(str(path), [f"{key} must be an object of server entries by name"])
    if not servers:
        raise SetupError(str(path), [f"{key} is empty: there are no servers to put mcp-guard in front of"])
    return servers


def _detect(path: Path, data: dict[str, Any]) -> ClientKind:
    has_vscode = "servers" in data or isinstance(data.get("mcp"), dict)
    has_claude = "mcpServers" in data
    if has_vscode and has_claude:
        raise SetupError(
            str(path),
            [
                "the file has both 'servers' (VS Code) and 'mcpServers' (Claude); "
                "name the client with --from claude-desktop, vscode or claude-code and a file with one of them"
            ],
        )
    if has_vscode:
        return "vscode"
    if is_claude_user_file(path, data):
        return "claude-code"
    if has_claude:
        return "claude-code" if path.name == CLAUDE_CODE_PROJECT_FILE else "claude-desktop"
    raise SetupError(
        str(path),
        ["no 'mcpServers' or 'servers' object found; is this an MCP client configuration?"],
    )


def strip_json_comments(text: str) -> str:
    """Blank out `//` and `/* */` comments and trailing commas, keeping every line and column.

    Positions stay where they were, so a JSON error still names the right line.
    """
    out = list(text)
    index, length = 0, len(text)
    last_comma: int | None = None
    while index < length:
        char = text[index]
        if char == '"':
            index = _skip_string(text, index)
            last_comma = None
            continue
        if text.startswith("//", index):
            end = text.find("\n", index)
            end = length if end == -1 else end
            _blank(out, index, end)
            index = end
            continue
        if text.startswith("/*", index):
            end = text.find("*/", index + 2)
            end = length if end == -1 else end + 2
            _blank(out, index, end)
            index = end
            continue
        if char == ",":
            last_comma = index
        elif char in "}]" and last_comma is not None:
            out[last_comma] = " "
            last_comma = None
        elif not char.isspace():
            last_comma = None
        index += 1
    return "".join(out)


def _skip_string(text: str, start: int) -> int:
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return index + 1
        index += 1
    return index


def _blank(out: list[str], start: int, end: int) -> None:
    for position in range(start, end):
        if out[position] not in "\r\n":
            out[position] = " "
