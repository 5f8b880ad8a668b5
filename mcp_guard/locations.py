"""Paths of the files that mcp-guard and the MCP clients it serves keep on this machine.

`mcp-guard init` reads the clients' files and writes mcp-guard's own; the gateway refuses tool
calls that name any of them. Both take the places from here, so they cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

# mcp-guard's folder inside the XDG configuration and state folders.
APP_FOLDER = "mcp-guard"
# Suffix of the client configuration init writes beside a policy: `claude-desktop.client.json`.
CLIENT_CONFIG_SUFFIX = ".client.json"
CLAUDE_DESKTOP_FILE = "claude_desktop_config.json"
CLAUDE_CODE_USER_FILE = ".claude.json"
CLAUDE_CODE_PROJECT_FILE = ".mcp.json"
VSCODE_WORKSPACE_FILE = Path(".vscode") / "mcp.json"


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


def claude_code_user_path() -> Path:
    """Return where Claude Code keeps user-scope and local-scope servers: `~/.claude.json`."""
    return Path.home() / CLAUDE_CODE_USER_FILE


def _xdg_folder(environ: Mapping[str, str], variable: str, default: Path) -> Path:
    value = environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / default
