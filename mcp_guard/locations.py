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
# Other files in a project that start MCP servers or run commands for an MCP client. VS Code's
# settings may contain servers too, and its tasks may run when the folder opens.
PROJECT_CLIENT_FILES = (
    CLAUDE_CODE_PROJECT_FILE,
    str(VSCODE_WORKSPACE_FILE),
    ".vscode/settings.json",
    ".vscode/tasks.json",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".cursor/mcp.json",
    ".cursor/hooks.json",
    ".gemini/settings.json",
    ".codex/config.toml",
    ".zed/settings.json",
    ".amazonq/mcp.json",
    "opencode.json",
    "opencode.jsonc",
)
# Descriptions of the client files that are not MCP server settings, by their last two path parts.
CLIENT_FILE_DESCRIPTIONS = {
    ".vscode/tasks.json": "VS Code's tasks, which it can run by itself",
    ".claude/plugins": "Claude Code's plugins, which run hooks and servers",
    ".cursor/hooks.json": "Cursor's hooks, which run commands",
}
# Folders in a project whose every file configures MCP servers (Continue's).
PROJECT_CLIENT_FOLDERS = (".continue/mcpServers",)
# Such files in the home folder, besides those whose places depend on the system or the
# environment (Claude Desktop's, VS Code's, Codex's and those in the XDG configuration folder).
HOME_CLIENT_FILES = (
    CLAUDE_CODE_USER_FILE,
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".cursor/mcp.json",
    ".cursor/hooks.json",
    ".codeium/windsurf/mcp_config.json",
    ".gemini/settings.json",
    ".aws/amazonq/mcp.json",
    ".continue/config.yaml",
    ".continue/config.json",
)
# Folders in the home folder whose files start servers or run commands: Claude Code's plugins
# (with their hooks and servers) and Continue's servers.
HOME_CLIENT_FOLDERS = (".claude/plugins", ".continue/mcpServers")
# Such files in the XDG configuration folder (`~/.config`): Zed's, opencode's and Goose's.
CONFIG_CLIENT_FILES = (
    "zed/settings.json",
    "opencode/opencode.json",
    "opencode/opencode.jsonc",
    "goose/config.yaml",
)
# The folders VS Code and its builds keep user settings in, below the system's settings folder.
VSCODE_APPS = ("Code", "Code - Insiders", "VSCodium")
# Such files in a VS Code `User` folder: servers, settings (which may contain servers too) and
# Cline's servers. The `profiles` folder contains the same files for each profile.
VSCODE_USER_FILES = (
    "mcp.json",
    "settings.json",
    "globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
)
VSCODE_USER_FOLDERS = ("profiles",)


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
    return vscode_user_folder(environ, platform) / "mcp.json"


def vscode_user_folder(environ: Mapping[str, str], platform: str = sys.platform, app: str = "Code") -> Path:
    """Return the `User` folder of VS Code (or of the build `app` names) on `platform`."""
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / app / "User"
    if platform == "win32":
        appdata = environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(appdata) / app / "User"
    return config_home(environ) / app / "User"


def codex_config_path(environ: Mapping[str, str]) -> Path:
    """Return Codex's configuration: `$CODEX_HOME/config.toml`, else `~/.codex/config.toml`."""
    codex_home = environ.get("CODEX_HOME", "")
    folder = Path(codex_home).expanduser() if codex_home else Path.home() / ".codex"
    return folder / "config.toml"


def claude_code_user_path() -> Path:
    """Return where Claude Code keeps user-scope and local-scope servers: `~/.claude.json`."""
    return Path.home() / CLAUDE_CODE_USER_FILE


def client_settings(
    environ: Mapping[str, str], project: Path, platform: str = sys.platform
) -> list[tuple[Path, bool]]:
    """Return the MCP clients' files and folders that start servers or run commands.

    Each comes with whether it is a folder, whose every file counts. `project` is the folder a
    client starts its servers in, where its project files lie. `CLIENT_FILE_DESCRIPTIONS` names
    the files that are not server settings.
    """
    home = Path.home()
    found = [(claude_desktop_path(environ, platform), False), (codex_config_path(environ), False)]
    for app in VSCODE_APPS:
        user = vscode_user_folder(environ, platform, app)
        found += [(user / name, False) for name in VSCODE_USER_FILES]
        found += [(user / name, True) for name in VSCODE_USER_FOLDERS]
    found += [(home / name, False) for name in HOME_CLIENT_FILES]
    found += [(home / name, True) for name in HOME_CLIENT_FOLDERS]
    found += [(config_home(environ) / name, False) for name in CONFIG_CLIENT_FILES]
    found += [(project / name, False) for name in PROJECT_CLIENT_FILES]
    found += [(project / name, True) for name in PROJECT_CLIENT_FOLDERS]
    return found


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
