"""The text of the starter policy and of the client configuration that routes through mcp-guard.

The policy is written as TOML text, not dumped from data, so that comments can explain each
part to someone who has not read the docs. `command.py` loads the result with the real
loader before anything is written.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp_guard.setup.importing import ImportedServer, ImportResult
from mcp_guard.setup.probe import ToolListing
from mcp_guard.setup.sources import CLIENT_TITLES, ClientKind

GATEWAY_ENTRY = "mcp-guard"
CLIENT_IDS: dict[ClientKind, str] = {
    "claude-desktop": "desktop",
    "vscode": "vscode",
    "claude-code": "claude-code",
}
# The header line that names the project folder of a policy written from a per-project source.
PROJECT_LINE = "# Project folder: "
# Arrays longer than this, in characters, are written one item per line.
INLINE_ARRAY_WIDTH = 80
COMMENT_WIDTH = 96
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Folders every PATH init writes ends with; a desktop client's own PATH may lack them.
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
# How much of a program's first line is read to see whether it runs on Node.js.
NODE_SHEBANG_BYTES = 256


def render_policy(imported: ImportResult, listings: dict[str, ToolListing] | None, state_dir: Path) -> str:
    """Return the policy file's text; `listings` is None when init ran with --offline.

    Raises:
        ValueError: A value cannot be written as TOML (see `toml_string`).
    """
    kind = imported.client.kind
    title = CLIENT_TITLES[kind]
    client_id = CLIENT_IDS[kind]
    lines = _header(imported, title)
    lines += [
        "[gateway]",
        "# Where the gateway keeps the audit key and trail, the pinned tool definitions and approvals.",
        "# init gave this policy a folder of its own, because only one gateway at a time may write an",
        "# audit trail. A relative path is resolved against this file's folder.",
        f"state_dir = {toml_string(str(state_dir))}",
        f"# The client that `mcp-guard run` serves over stdio: {title}, defined below.",
        f"default_client = {toml_string(client_id)}",
        "",
        f"# {title}. Rules name it to say what it may call.",
        f"[clients.{client_id}]",
        "",
    ]
    for server in imported.servers:
        listing = None if listings is None else listings[server.server_id]
        lines += _server_block(server, listing)
        lines += _rule_blocks(server, listing, client_id, title)
    if imported.skipped:
        lines.append("# Not imported, and not in the client configuration init wrote:")
        lines += [
            f"#   {comment_text(repr(name))}: {comment_text(reason)}" for name, reason in imported.skipped
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_client_config(imported: ImportResult, launcher: Sequence[str], policy: Path) -> dict[str, Any]:
    """Return the client configuration with the user's servers replaced by one mcp-guard entry."""
    kind = imported.client.kind
    entry: dict[str, Any] = {"command": launcher[0], "args": [*launcher[1:], "run", "--config", str(policy)]}
    if kind != "claude-desktop":
        entry = {"type": "stdio", **entry}
    env = {name: variable.client_value for name, variable in sorted(imported.variables.items())}
    path = gateway_path(imported)
    if path is not None and "PATH" not in env:
        env["PATH"] = path
    if env:
        entry["env"] = env
    if kind == "claude-code":
        return {"mcpServers": {GATEWAY_ENTRY: entry}}
    if kind == "vscode":
        # A settings.json with an "mcp" object is the older form; write a standalone mcp.json.
        data = {} if "servers" not in imported.client.data else copy.deepcopy(imported.client.data)
        data.pop("inputs", None)
        result: dict[str, Any] = {"inputs": imported.inputs} if imported.inputs else {}
        return {**result, **data, "servers": {GATEWAY_ENTRY: entry}}
    data = copy.deepcopy(imported.client.data)
    data["mcpServers"] = {GATEWAY_ENTRY: entry}
    return data


def gateway_path(imported: ImportResult, search_path: str | None = None) -> str | None:
    """Return a PATH for the gateway that finds each stdio server's command, or None without one.

    A desktop client starts the gateway with a minimal environment of its own rather than
    the user's shell, so a bare command such as `npx` or `uvx` would not be found, and a
    Node.js script (`#!/usr/bin/env node`) would not find `node`. The PATH lists the
    folders where init finds those now (on `search_path`, else this process's PATH), then
    the usual system folders.
    """
    commands = [server.table["command"] for server in imported.servers if "command" in server.table]
    if not commands:
        return None
    found: list[str] = []
    for command in commands:
        program = command if os.path.isabs(command) else shutil.which(command, path=search_path)
        if program is not None:
            found.append(program)
    folders = [os.path.dirname(program) for program in found]
    if any(_runs_on_node(program) for program in found):
        node = shutil.which("node", path=search_path)
        if node is not None:
            folders.append(os.path.dirname(node))
    return os.pathsep.join(dict.fromkeys([*folders, *SYSTEM_PATH]))


def _runs_on_node(program: str) -> bool:
    if os.path.basename(program) in ("node", "npx", "npm"):
        return True
    try:
        with open(program, "rb") as file:
            first_line = file.readline(NODE_SHEBANG_BYTES)
    except OSError:
        return False
    return first_line.startswith(b"#!") and b"node" in first_line


def _header(imported: ImportResult, title: str) -> list[str]:
    project = imported.client.project
    return [
        "# A starter policy for mcp-guard, written by `mcp-guard init` from",
        f"#   {comment_text(str(imported.client.path))} ({title})",
        *([] if project is None else [f"{PROJECT_LINE}{comment_text(str(project))}"]),
        "#",
        f"# {title} now starts mcp-guard, which starts the servers below and offers their tools as",
        "# SERVER__TOOL. Every call passes mcp-guard's checks and is recorded in the audit trail:",
        "#   - tools that only read run without asking;",
        "#   - every other tool runs only after you approve the call;",
        "#   - a tool that no rule below names is hidden, and calls to it are denied.",
        "# The first time the gateway starts, it pins each server's tool definitions. A tool that",
        "# changes, or that a server adds later, is withheld until `mcp-guard pins approve` accepts it.",
        "#",
        "# Review this file, then check it with `mcp-guard check FILE`. policies/README.md in the",
        "# mcp-guard repository explains every setting.",
        "",
    ]


def _server_block(server: ImportedServer, listing: ToolListing | None) -> list[str]:
    origin = f"{server.name!r} in the client configuration"
    if server.server_id != server.name:
        origin += ", renamed because ids allow only letters, digits, '_' and '-' and are unique"
    lines = _comment(f"Server {origin}.")
    for note in server.notes:
        lines += _comment(note)
    lines.append(f"[servers.{toml_key(server.server_id)}]")
    for key in ("command", "args", "cwd", "url"):
        if key in server.table:
            lines.append(f"{key} = {toml_value(server.table[key])}")
    for key in ("env", "headers"):
        for name, value in server.table.get(key, {}).items():
            lines.append(f"{key}.{toml_key(name)} = {toml_string(value)}")
    templates_key = "env_from" if server.kind == "stdio" else "headers_from"
    templates = server.table.get(templates_key, {})
    if templates:
        lines += [
            "# Values read from the gateway's own environment, so that no secret is stored here. The",
            "# client configuration init wrote sets these variables for the gateway.",
        ]
        lines += [
            f"{templates_key}.{toml_key(name)} = {toml_string(value)}" for name, value in templates.items()
        ]
    lines += _read_only_lines(listing)
    return [*lines, ""]


def _read_only_lines(listing: ToolListing | None) -> list[str]:
    if listing is None:
        return [
            "# init ran with --offline and did not list this server's tools, so every tool waits for",
            "# approval. List the tools that only read here (`mcp-guard check` shows the tools).",
            "read_only_tools = []",
        ]
    if not listing.reached:
        return [
            *_comment(f"init could not reach this server: {listing.error or 'no reason given'}"),
            "# So every tool waits for approval. Once it runs, list the tools that only read here",
            "# (`mcp-guard check` shows the tools).",
            "read_only_tools = []",
        ]
    lines = [
        "# Tools that only read, taken from the server's own readOnlyHint annotations when init",
        "# listed its tools. These are the server's claims: review the list, because the rule below",
        "# runs these tools without asking.",
        f"read_only_tools = {toml_value(list(listing.read_only))}",
    ]
    if listing.skipped:
        lines += _comment(f"Tools left out because no rule can name them: {', '.join(listing.skipped)}")
    return lines


def _rule_blocks(
    server: ImportedServer, listing: ToolListing | None, client_id: str, title: str
) -> list[str]:
    sid = server.server_id
    lines = _comment(
        f"{title} may call the read_only_tools of {sid} without asking. A rule without "
        "`write = true` covers only those tools."
    )
    lines += [
        "[[rules]]",
        f"name = {toml_string(f'{client_id} reads {sid}')}",
        f"clients = {toml_value([client_id])}",
        f"server = {toml_string(sid)}",
        'tools = ["*"]',
        'decision = "auto"',
        "",
    ]
    if listing is not None and listing.reached:
        if not listing.writing:
            return [*lines, *_comment(f"{sid} listed no tool that writes, so no rule asks for approval."), ""]
        tools = list(listing.writing)
        lines += _comment(
            f"Each call to these tools of {sid} waits for your approval: within the call if {title} "
            "supports it, else with `mcp-guard approvals`. Tools not named here stay hidden."
        )
    else:
        tools = ["*"]
        lines += _comment(
            f"Each call to any tool of {sid} waits for your approval: within the call if {title} "
            'supports it, else with `mcp-guard approvals`. Replace "*" with tool names to narrow it.'
        )
    lines += [
        "[[rules]]",
        f"name = {toml_string(f'{client_id} writes with {sid} after approval')}",
        f"clients = {toml_value([client_id])}",
        f"server = {toml_string(sid)}",
        f"tools = {toml_value(tools)}",
        'decision = "approve"',
        "write = true",
        "",
    ]
    return lines


def _comment(paragraph: str) -> list[str]:
    """Return a paragraph as comment lines, wrapped."""
    return [f"# {line}" for line in textwrap.wrap(comment_text(paragraph), COMMENT_WIDTH)]


def toml_value(value: Any) -> str:
    """Return a string or a list of strings as TOML."""
    if isinstance(value, str):
        return toml_string(value)
    items = [toml_string(item) for item in value]
    inline = "[" + ", ".join(items) + "]"
    if len(inline) <= INLINE_ARRAY_WIDTH:
        return inline
    return "[\n" + "".join(f"    {item},\n" for item in items) + "]"


def toml_string(value: str) -> str:
    """Return `value` as a TOML basic string, escaping what TOML requires.

    Raises:
        ValueError: The value contains a lone surrogate, which no TOML file can hold.
    """
    parts = ['"']
    for char in value:
        code = ord(char)
        if char in '"\\':
            parts.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            parts.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("the text contains a lone UTF-16 surrogate")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)


def toml_key(key: str) -> str:
    """Return `key` as a TOML key: bare when it can be, quoted otherwise."""
    return key if BARE_KEY.match(key) else toml_string(key)


def comment_text(text: str) -> str:
    """Return `text` safe for a one-line TOML comment and a terminal: unprintables escaped."""
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)
