"""The summary `mcp-guard init` prints on stdout: what it read and wrote, and what to do next.

Warnings about outputs that an imported server or a git work tree can reach are printed with
the paths they are about. Variable values are never printed, only their names, and the next
steps never ask the user to type a value on the command line, where shell history keeps it.
"""

from __future__ import annotations

import os
import shlex

from mcp_guard.launcher import command_line
from mcp_guard.setup.importing import ImportedServer, ImportResult
from mcp_guard.setup.outputs import Exposure, Outputs
from mcp_guard.setup.probe import ToolListing
from mcp_guard.setup.render import comment_text
from mcp_guard.setup.sources import CLIENT_TITLES


def print_summary(
    imported: ImportResult,
    listings: dict[str, ToolListing] | None,
    outputs: Outputs,
    exposures: list[Exposure],
) -> None:
    """Print what init read, what it wrote and where, the warnings, and the next steps."""
    title = CLIENT_TITLES[imported.client.kind]
    print(
        f"Read {len(imported.servers)} of {len(imported.client.servers)} servers from {imported.client.path} ({title})."
    )
    for note in imported.client.notes:
        print(f"  NOTE {comment_text(note)}")
    for server in imported.servers:
        listing = None if listings is None else listings[server.server_id]
        print(f"  {server.server_id}{_scope(imported, server)}: {_tool_summary(listing)}")
    if listings is not None and any(not listing.reached for listing in listings.values()):
        print(f"  {_reach_hint(imported)}")
    for name, reason in imported.skipped:
        print(f"  NOT IMPORTED {comment_text(repr(name))}: {comment_text(reason)}")
    for warning in imported.warnings:
        print(f"  WARNING {comment_text(warning)}")
    _print_variables(imported)
    _print_outputs(title, outputs)
    for exposure in exposures:
        print(f"\nWARNING: {comment_text(exposure.message())}")
    print("\nNext:")
    _print_check_step(imported, outputs)
    print(f"  2. {_paste_instructions(imported, outputs)}")


def _scope(imported: ImportResult, server: ImportedServer) -> str:
    scope = imported.client.scopes.get(server.name)
    return "" if scope is None else f" ({scope} scope)"


def _reach_hint(imported: ImportResult) -> str:
    """Return how to list the tools of a server that init could not reach."""
    unknown = sorted(
        name
        for name, variable in imported.variables.items()
        if variable.probe_value is None and name not in os.environ
    )
    reads = "; ".join(_read_secretly(name) for name in unknown)
    variables = (
        f" (for a variable the client fills in, set it here without typing its value on the command "
        f"line: {reads})"
        if unknown
        else ""
    )
    return (
        f"To list the tools of a server not reached, fix the cause shown{variables}, then run init again "
        "with --force. Until then every tool of that server waits for approval."
    )


def _tool_summary(listing: ToolListing | None) -> str:
    if listing is None:
        return "tools not listed (--offline): every tool waits for approval"
    if not listing.reached:
        return f"NOT REACHED ({comment_text(listing.error or '')}): every tool waits for approval"
    count = len(listing.read_only) + len(listing.writing)
    return (
        f"{count} tools: {len(listing.read_only)} read without asking, {len(listing.writing)} need approval"
    )


def _print_variables(imported: ImportResult) -> None:
    copied = sorted(name for name, variable in imported.variables.items() if variable.copied_secret)
    mapped = sorted(name for name, variable in imported.variables.items() if not variable.copied_secret)
    if copied:
        print(
            f"Secrets kept out of the policy: {', '.join(copied)}. The policy reads them from the gateway's "
            "environment, and the client configuration init wrote sets them there, with the values your "
            "client configuration had. Do not commit that file."
        )
    for name in mapped:
        variable = imported.variables[name]
        print(
            f"{name} is set for the gateway by the client from {comment_text(variable.client_value)}, "
            "as it was for the server."
        )


def _print_outputs(title: str, outputs: Outputs) -> None:
    rows = [
        ("policy:", str(outputs.policy)),
        (f"{title} configuration:", f"{outputs.client_config} (readable only by you)"),
    ]
    width = max(len(label) for label, _value in rows)
    print("\nWrote:")
    for label, value in rows:
        print(f"  {label:<{width}} {comment_text(value)}")
    print(
        f"The gateway keeps this policy's state (audit trail, pins, approvals) in "
        f"{comment_text(str(outputs.state_dir))}, a folder of its own that it creates when it first starts."
    )


def _print_check_step(imported: ImportResult, outputs: Outputs) -> None:
    check = command_line("check", str(outputs.policy))
    unset = sorted(name for name in imported.variables if name not in os.environ)
    if not unset:
        print(f"  1. Review the policy, then check it: {check}")
        return
    print(
        f"  1. Review the policy, then check it. `check` starts each server, and a server cannot start "
        f"while a variable it reads is unset: {', '.join(unset)}. Set each without typing its value on "
        "the command line, where shell history would keep it. `read -rs NAME` waits for you to paste "
        "the value and press Enter."
    )
    for name in unset:
        print(f"       {_read_secretly(name)}")
    print(f"       {check}")


def _read_secretly(name: str) -> str:
    """Return a shell line that reads a variable's value without echoing it, then exports it."""
    return f"read -rs {name} && export {name}"


def _paste_instructions(imported: ImportResult, outputs: Outputs) -> str:
    kind = imported.client.kind
    source = imported.client.path
    if kind == "claude-desktop":
        return (
            f"Keep a copy of {source}, replace it with {outputs.client_config} (it keeps your other "
            "settings), then quit and restart Claude Desktop."
        )
    if kind == "vscode":
        return (
            f"Replace the servers (and inputs) of {source} with those in {outputs.client_config}, "
            "then restart the servers (MCP: List Servers)."
        )
    return (
        f"Remove the imported servers from {_claude_code_places(imported)}. Then start Claude Code with "
        f"`claude --mcp-config {shlex.quote(str(outputs.client_config))}`, or add its mcp-guard entry as a local-scope "
        "server (under this folder's entry of `projects` in ~/.claude.json). Do not put it in .mcp.json: "
        f"that file is in the project folder{_credentials_note(imported)}."
    )


def _credentials_note(imported: ImportResult) -> str:
    """Return why the entry must stay out of the project folder: its credentials, if it sets any."""
    if imported.variables:
        return ", and the entry contains your credentials"
    return ", where the agent could change the entry that starts its own gateway"


def _claude_code_places(imported: ImportResult) -> str:
    """Return where the imported Claude Code servers are kept, by scope."""
    client = imported.client
    if not client.scopes:
        return str(client.path)
    imported_names = {server.name for server in imported.servers}
    places = []
    for scope, where in (
        ("user", "the top-level mcpServers"),
        ("local", f"projects[{str(client.project)!r}].mcpServers"),
    ):
        names = [name for name, found in client.scopes.items() if found == scope and name in imported_names]
        if names:
            places.append(f"{where} of {client.path} ({', '.join(names)})")
    return " and ".join(places)
