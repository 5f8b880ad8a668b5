"""Paths of the files that mcp-guard and the MCP clients it serves keep on this machine.

`mcp-guard init` reads the clients' files and writes mcp-guard's own; the gateway refuses tool
calls that name any of them. Both take the places from here, so they cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# mcp-guard's folder inside the XDG configuration and state folders.
APP_FOLDER = "mcp-guard"
# Suffix of the client configuration init writes beside a policy: `claude-desktop.client.json`.
CLIENT_CONFIG_SUFFIX = ".client.json"
CLAUDE_DESKTOP_FILE = "claude_desktop_config.json"
CLAUDE_CODE_USER_FILE = ".claude.json"
CLAUDE_CODE_PROJECT_FILE = ".mcp.json"
VSCODE_WORKSPACE_FILE = Path(".vscode") / "mcp.json"
# Other files in a project that start MCP servers or run commands for an MCP client.
PROJECT_CLIENT_FILES = (
    CLAUDE_CODE_PROJECT_FILE,
    str(VSCODE_WORKSPACE_FILE),
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".cursor/mcp.json",
)
# Such files in the home folder, besides Claude Desktop's and VS Code's, whose places depend on
# the system.
HOME_CLIENT_FILES = (
    CLAUDE_CODE_USER_FILE,
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".cursor/mcp.json",
    ".codeium/windsurf/mcp_config.json",
)


def config_home(environ: Mapping[str, str]) -> Path:
    """Return `$XDG_CONFIG_HOME`, else `~/.config`. A relative value is invalid by the XDG spec, and ignored."""
    return _xdg_folder(environ, "XDG_CONFIG_HOME", Path(".config"))


def state_home(environ: Mapping[str, str]) -> Path:
    """Return `$XDG_STATE_HOME`, else `~/.local/state`. A relative value is invalid by the XDG spec, and ignored."""
    return _xdg_folder(environ, "XDG_STATE_HOME", Path(".local") / "state")


def client_config_beside(policy: Path) -> Path:
    """Return the client configuration init writes beside `policy`."""
    return policy.with_name(policy.stem + CLIENT_CONFIG_SUFFIX)


def claude_desktop_path(environ: Mapping[str, str], platform: str = sys.platform) -> Path:
    """Return where Claude Desktop keeps its configuration on `platform`."""
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Claude" / CLAUDE_DESKTOP_FILE
    if platform == "win32":
        appdata = environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(appdata) / "Claude" / CLAUDE_DESKTOP_FILE
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "Claude" / CLAUDE_DESKTOP_FILE


def vscode_user_path(environ: Mapping[str, str], platform: str = sys.platform) -> Path:
    """Return VS Code's user-profile `mcp.json` on `platform`."""
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Code" / "User" / "mcp.json"
    if platform == "win32":
        appdata = environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(appdata) / "Code" / "User" / "mcp.json"
    return config_home(environ) / "Code" / "User" / "mcp.json"


def claude_code_user_path() -> Path:
    """Return where Claude Code keeps user-scope and local-scope servers: `~/.claude.json`."""
    return Path.home() / CLAUDE_CODE_USER_FILE


def folders_given(table: Mapping[str, Any], start: Path, policy_folder: Path) -> list[Path]:
    """Return the existing folders among a stdio server's `cwd` and arguments, resolved.

    Args:
        table: The server's policy table, with `cwd` and `args`.
        start: Where a relative argument is taken from when the server has no `cwd`: the project
            folder, where the client starts its servers, or the folder init or check runs in.
        policy_folder: Where a relative `cwd` is taken from, as the loader does.

    `--option=VALUE` arguments are split.
    """
    folders: list[Path] = []
    cwd = table.get("cwd")
    if cwd:
        start = policy_folder / Path(cwd).expanduser()
        folders.append(start)
    for arg in table.get("args") or []:
        values = [arg, arg.split("=", 1)[1]] if arg.startswith("-") and "=" in arg else [arg]
        folders += [start / Path(value).expanduser() for value in values if value]
    return list(dict.fromkeys(folder.resolve() for folder in folders if folder.is_dir()))


def _xdg_folder(environ: Mapping[str, str], variable: str, default: Path) -> Path:
    value = environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / default
