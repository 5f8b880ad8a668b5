"""`mcp-guard init`: a starter policy and client configuration from an existing MCP client setup.

The command reads the client's file, lists each server's tools (unless `--offline`),
writes the policy and a client configuration whose only server is mcp-guard, and prints
what it did and what to do next (`summary.py`). It never changes the client's own file. Both
files are checked before either is written, and an existing file is replaced only with
`--force`. Where the files go is decided in `outputs.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import anyio
import structlog

from mcp_guard.audit.redaction import DEFAULT_REDACTOR
from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError, SetupError
from mcp_guard.launcher import launcher
from mcp_guard.log import configure_logging
from mcp_guard.setup.importing import ImportResult, guarded_policy, import_servers
from mcp_guard.setup.outputs import Exposure, Outputs, check_existing, exposures, plan_outputs
from mcp_guard.setup.probe import list_tools
from mcp_guard.setup.render import render_client_config, render_policy
from mcp_guard.setup.sources import ClientFile, read_client_file
from mcp_guard.setup.summary import print_summary

log = structlog.get_logger(module=__name__)

# The client configuration contains the credentials the client had before, so only its owner may read it.
CLIENT_CONFIG_MODE = 0o600
# Stands in for every variable the policy reads while the policy is test-loaded: the loader only
# checks that each one is set.
PLACEHOLDER_VALUE = "set-by-the-client"
# The folder init creates for the policy and the client configuration is for their owner alone.
OUTPUT_FOLDER_MODE = 0o700


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
            "folder, else the servers ~/.claude.json has for this folder), or the path of a configuration "
            "file, recognised by its contents"
        ),
    )
    init.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help=(
            "policy file to write; the client configuration goes beside it (default: "
            "$XDG_CONFIG_HOME/mcp-guard/CLIENT[-PROJECT].toml, where $XDG_CONFIG_HOME defaults to ~/.config)"
        ),
    )
    init.add_argument(
        "--workspace",
        metavar="DIR",
        type=Path,
        help=(
            "the folder VS Code has open, which ${workspaceFolder} means in a user-profile mcp.json "
            "(default for a .vscode/mcp.json: the folder that contains .vscode)"
        ),
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


def _reject_replacing_guarded_policy(client: ClientFile, policy: Path) -> None:
    """Stop before writing over the policy that one of the client's entries runs mcp-guard with.

    The client file was routed through mcp-guard already. A policy written from its other
    entries would drop every server the existing policy guards, even with --force.
    """
    for name, entry in client.servers.items():
        guarded = guarded_policy(entry)
        if guarded is not None and guarded.resolve() == policy.resolve():
            raise SetupError(
                str(policy),
                [
                    f"the client's entry {str(name)!r} runs mcp-guard with this policy, so writing it would "
                    "drop the servers it guards; add the new servers to its [servers] by hand, or name "
                    "another policy file with --output"
                ],
            )


def _init(args: argparse.Namespace) -> int:
    client = read_client_file(args.source, workspace=args.workspace)
    imported = import_servers(client)
    outputs = plan_outputs(args.output, client)
    _reject_replacing_guarded_policy(client, outputs.policy)
    check_existing(outputs, client, force=args.force)
    listings = None if args.offline else anyio.run(list_tools, imported)
    try:
        policy_text = render_policy(imported, listings, outputs.state_dir)
        client_text = json.dumps(render_client_config(imported, launcher(), outputs.policy), indent=2) + "\n"
    except ValueError as exc:
        raise SetupError(str(client.path), [f"a value cannot be written to the policy file: {exc}"]) from None
    _check_policy(policy_text, outputs.policy, imported)
    _publish(outputs, policy_text, client_text, force=args.force)
    log.info("init_finished", servers=len(imported.servers), policy=str(outputs.policy))
    found = exposures(outputs, imported)
    _log_exposures(found)
    print_summary(imported, listings, outputs, found)
    return 0


def _log_exposures(found: list[Exposure]) -> None:
    for exposure in found:
        fields = {"output": exposure.label, "path": str(exposure.path), "folder": str(exposure.folder)}
        if exposure.server is None:
            log.warning("init_output_in_git_work_tree", **fields)
        else:
            log.warning("init_output_readable_by_server", server=exposure.server, **fields)


def _check_policy(text: str, policy: Path, imported: ImportResult) -> None:
    """Load the policy text with the real loader, from the folder it will live in."""
    environ = {**os.environ, **{name: PLACEHOLDER_VALUE for name in imported.variables}}
    policy.parent.mkdir(mode=OUTPUT_FOLDER_MODE, parents=True, exist_ok=True)
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


def _publish(outputs: Outputs, policy_text: str, client_text: str, *, force: bool) -> None:
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
