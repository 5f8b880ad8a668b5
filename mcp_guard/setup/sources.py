"""Finding and reading the MCP configuration of an existing client.

Three clients are understood: Claude Desktop (`claude_desktop_config.json`, servers under
`mcpServers`), VS Code (`.vscode/mcp.json`, servers under `servers`, with `inputs`) and Claude
Code (`.mcp.json`, servers under `mcpServers`). A path given by the user is recognised by its
shape. Turning the server entries into policy tables is left to `importing.py`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_guard.errors import SetupError

ClientKind = Literal["claude-desktop", "vscode", "claude-code"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("claude-desktop", "vscode", "claude-code")
CLIENT_TITLES: dict[ClientKind, str] = {
    "claude-desktop": "Claude Desktop",
    "vscode": "VS Code",
    "claude-code": "Claude Code",
}
CLAUDE_DESKTOP_FILE = "claude_desktop_config.json"
VSCODE_WORKSPACE_FILE = Path(".vscode") / "mcp.json"
CLAUDE_CODE_PROJECT_FILE = ".mcp.json"
# Claude Code also keeps user-scope servers in ~/.claude.json, next to much other state.
CLAUDE_CODE_USER_FILE = ".claude.json"


@dataclass(frozen=True)
class ClientFile:
    """A parsed client configuration file and the client it belongs to."""

    kind: ClientKind
    path: Path
    data: dict[str, Any]
    """The whole file, as parsed."""
    servers: dict[str, Any]
    """The server entries by the name the client gives them."""


def read_client_file(source: str, environ: Mapping[str, str] | None = None) -> ClientFile:
    """Find and parse the configuration that `source` names: a client kind or a file path.

    Raises:
        SetupError: The file is missing, unreadable, not JSON, or has no server entries.
    """
    env = os.environ if environ is None else environ
    if source in CLIENT_KINDS:
        kind: ClientKind | None = source
        path = _default_path(source, env)
    else:
        kind = None
        path = Path(source).expanduser()
    data = _parse(path, _read(path, kind))
    detected, servers = _servers_of(path, data, kind)
    return ClientFile(kind=detected, path=path.absolute(), data=data, servers=servers)


def claude_desktop_path(environ: Mapping[str, str], platform: str = sys.platform) -> Path:
    """Return where Claude Desktop keeps its configuration on `platform`."""
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Claude" / CLAUDE_DESKTOP_FILE
    if platform == "win32":
        appdata = environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(appdata) / "Claude" / CLAUDE_DESKTOP_FILE
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "Claude" / CLAUDE_DESKTOP_FILE


def _default_path(kind: ClientKind, environ: Mapping[str, str]) -> Path:
    if kind == "claude-desktop":
        return claude_desktop_path(environ)
    if kind == "vscode":
        return Path.cwd() / VSCODE_WORKSPACE_FILE
    return Path.cwd() / CLAUDE_CODE_PROJECT_FILE


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
            "--from PATH (user-scope servers are in ~/.claude.json)"
        )
    return "check the path, or name a client: --from claude-desktop, vscode or claude-code"


def _parse(path: Path, text: str) -> dict[str, Any]:
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


def _servers_of(
    path: Path, data: dict[str, Any], kind: ClientKind | None
) -> tuple[ClientKind, dict[str, Any]]:
    """Return the client kind and the server entries, recognising the kind by shape if not given."""
    if kind is None:
        kind = _detect(path, data)
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
    return kind, servers


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
    if has_claude:
        return (
            "claude-code"
            if path.name in (CLAUDE_CODE_PROJECT_FILE, CLAUDE_CODE_USER_FILE)
            else "claude-desktop"
        )
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
