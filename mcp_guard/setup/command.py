"""`mcp-guard init`: a starter policy and client configuration from an existing MCP client setup.

The command reads the client's file, lists each server's tools (unless `--offline`),
writes the policy and a client configuration whose only server is mcp-guard, and prints
what it did and what to do next. It never changes the client's own file. Both files are
checked before either is written, and an existing file is replaced only with `--force`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from mcp_guard.audit.redaction import DEFAULT_REDACTOR
from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError, SetupError
from mcp_guard.launcher import command_line, launcher
from mcp_guard.log import configure_logging
from mcp_guard.setup.importing import ImportResult, import_servers
from mcp_guard.setup.probe import ToolListing, list_tools
from mcp_guard.setup.render import CLIENT_CONFIG_NAMES, comment_text, render_client_config, render_policy
from mcp_guard.setup.sources import CLIENT_TITLES, read_client_file

log = structlog.get_logger(module=__name__)

DEFAULT_OUTPUT = "mcp-guard.toml"
# The client configuration contains the credentials the client had before, so only its owner may read it.
CLIENT_CONFIG_MODE = 0o600
# Stands in for every variable the policy reads while the policy is test-loaded: the loader only
# checks that each one is set.
PLACEHOLDER_VALUE = "set-by-the-client"


@dataclass(frozen=True)
class _Outputs:
    policy: Path
    client_config: Path


def add_init_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `init` to the command line."""
    init = commands.add_parser(
        "init",
        help="write a starter policy and client configuration from an existing MCP client setup",
        description=(
            "Read the MCP servers of Claude Desktop, VS Code or Claude Code, write a policy that puts "
            "mcp-guard in front of them, and a client configuration that starts mcp-guard instead. "
            "The client's own file is never changed."
        ),
    )
    init.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help=(
            "claude-desktop, vscode (.vscode/mcp.json in this folder), claude-code (.mcp.json in this "
            "folder), or the path of a configuration file, recognised by its contents"
        ),
    )
    init.add_argument(
        "--output", "-o", default=DEFAULT_OUTPUT, help=f"policy file to write (default: {DEFAULT_OUTPUT})"
    )
    init.add_argument("--force", action="store_true", help="replace the output files if they exist")
    init.add_argument(
        "--offline",
        action="store_true",
        help="do not start the servers to list their tools; then every tool waits for approval",
    )


def run_init_command(args: argparse.Namespace) -> int:
    """Run `mcp-guard init` and return the exit status."""
    # Credentials from the client file pass through this process: mask them in every log line.
    configure_logging(args.log_level, extra_processors=[DEFAULT_REDACTOR.redact_event])
    try:
        return _init(args)
    except SetupError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _init(args: argparse.Namespace) -> int:
    client = read_client_file(args.source)
    imported = import_servers(client)
    outputs = _outputs(Path(args.output), imported)
    if not args.force:
        _refuse_existing(outputs)
    listings = None if args.offline else anyio.run(list_tools, imported)
    try:
        policy_text = render_policy(imported, listings)
        client_text = json.dumps(render_client_config(imported, launcher(), outputs.policy), indent=2) + "\n"
    except ValueError as exc:
        raise SetupError(str(client.path), [f"a value cannot be written to the policy file: {exc}"]) from None
    _check_policy(policy_text, outputs.policy, imported)
    _publish(outputs, policy_text, client_text, force=args.force)
    log.info("init_finished", servers=len(imported.servers), policy=str(outputs.policy))
    _print_summary(imported, listings, outputs)
    return 0


def _outputs(output: Path, imported: ImportResult) -> _Outputs:
    policy = output.expanduser().absolute()
    if policy.is_dir():
        raise SetupError(str(policy), ["--output names a folder; name the policy file to write"])
    client_config = policy.parent / CLIENT_CONFIG_NAMES[imported.client.kind]
    if client_config == imported.client.path or policy == imported.client.path:
        raise SetupError(
            str(policy), ["init never writes over the client's own file; choose another --output"]
        )
    return _Outputs(policy=policy, client_config=client_config)


def _refuse_existing(outputs: _Outputs) -> None:
    existing = [path for path in (outputs.policy, outputs.client_config) if path.exists()]
    if existing:
        raise SetupError(
            str(existing[0]),
            [
                f"{path} already exists; pass --force to replace it, or --output to write elsewhere"
                for path in existing
            ],
        )


def _check_policy(text: str, policy: Path, imported: ImportResult) -> None:
    """Load the policy text with the real loader, from the folder it will live in."""
    environ = {**os.environ, **{name: PLACEHOLDER_VALUE for name in imported.variables}}
    policy.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=policy.parent, prefix=".mcp-guard-init-", suffix=".toml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        load_config(temporary, environ=environ)
    except ConfigError as exc:
        # A generated policy that does not load is a bug in init, not in the user's file.
        raise SetupError(
            str(policy), [f"the generated policy does not load, please report this: {exc}"]
        ) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def _publish(outputs: _Outputs, policy_text: str, client_text: str, *, force: bool) -> None:
    _write(outputs.policy, policy_text, _default_mode(), force=force)
    try:
        _write(outputs.client_config, client_text, CLIENT_CONFIG_MODE, force=force)
    except SetupError:
        if not force:
            outputs.policy.unlink(missing_ok=True)  # written just now, so nothing is left half done
        raise


def _write(path: Path, text: str, mode: int, *, force: bool) -> None:
    """Write `text` to `path` through a temporary file; without `force`, never replace a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".mcp-guard-init-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, mode)
        if force:
            os.replace(temporary, path)
        else:
            # A hard link fails if the target exists, so a file created meanwhile is kept.
            os.link(temporary, path)
    except FileExistsError:
        raise SetupError(
            str(path), ["the file appeared while init ran; pass --force to replace it"]
        ) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _print_summary(
    imported: ImportResult, listings: dict[str, ToolListing] | None, outputs: _Outputs
) -> None:
    title = CLIENT_TITLES[imported.client.kind]
    print(
        f"Read {len(imported.servers)} of {len(imported.client.servers)} servers from {imported.client.path} ({title})."
    )
    for server in imported.servers:
        print(
            f"  {server.server_id}: {_tool_summary(None if listings is None else listings[server.server_id])}"
        )
    if listings is not None and any(not listing.reached for listing in listings.values()):
        print(f"  {_reach_hint(imported)}")
    for name, reason in imported.skipped:
        print(f"  NOT IMPORTED {comment_text(repr(name))}: {comment_text(reason)}")
    for warning in imported.warnings:
        print(f"  WARNING {comment_text(warning)}")
    _print_variables(imported)
    print("\nWrote:")
    labels = ("policy:", f"{title} configuration:")
    width = max(map(len, labels))
    print(f"  {labels[0]:<{width}} {outputs.policy}")
    print(f"  {labels[1]:<{width}} {outputs.client_config} (readable only by you)")
    print("\nNext:")
    needed = " ".join(f"{name}=..." for name in sorted(imported.variables))
    prefix = f"{needed} " if needed else ""
    print(f"  1. Review the policy, then check it: {prefix}{command_line('check', str(outputs.policy))}")
    print(f"  2. {_paste_instructions(imported, outputs)}")


def _reach_hint(imported: ImportResult) -> str:
    """Return how to list the tools of a server that init could not reach."""
    unknown = sorted(
        name
        for name, variable in imported.variables.items()
        if variable.probe_value is None and name not in os.environ
    )
    exports = " ".join(f"{name}=..." for name in unknown)
    variables = f" (for a variable the client fills in, export it here: export {exports})" if unknown else ""
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


def _paste_instructions(imported: ImportResult, outputs: _Outputs) -> str:
    kind = imported.client.kind
    source = imported.client.path
    if kind == "claude-desktop":
        return (
            f"Keep a copy of {source}, replace it with {outputs.client_config.name} (it keeps your other "
            "settings), then quit and restart Claude Desktop."
        )
    if kind == "vscode":
        return (
            f"Replace the servers (and inputs) of {source} with those in {outputs.client_config.name}, "
            "then restart the servers (MCP: List Servers)."
        )
    return (
        f"Replace the mcpServers of {source} with those in {outputs.client_config.name}, "
        "then restart Claude Code."
    )
