"""The `mcp-guard` command line.

`run` serves the gateway (stdio by default, where stdout belongs to the
protocol); `init` writes a starter policy from a client's MCP configuration;
`check` validates a policy file and shows what clients would see;
`audit`, `pins`, `limits` and `approvals` read and manage the gateway's state.
Every command writes its logs to stderr.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from mcp_guard import __version__
from mcp_guard.approval.cli import add_approvals_commands, run_approvals_command
from mcp_guard.audit import Redactor
from mcp_guard.audit.cli import add_audit_commands, run_audit_command
from mcp_guard.config import GatewayConfig, load_config
from mcp_guard.config.loading import server_environment_problems
from mcp_guard.config.models import StdioServerConfig
from mcp_guard.config.rules import suggestion
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID, SandboxSettings
from mcp_guard.downstream.catalog import Catalog, ExportedTool, export_builtin_tool
from mcp_guard.errors import AuditUnavailable, ConfigError, GuardError, SandboxError
from mcp_guard.gateway.identity import ClientDirectory, hash_api_key, new_api_key
from mcp_guard.gateway.policy_guard import protected_places
from mcp_guard.locations import folders_given
from mcp_guard.log import LEVELS, configure_logging
from mcp_guard.pinning import PinStore
from mcp_guard.pinning.cli import add_pins_commands, run_pins_command
from mcp_guard.pinning.display import escape_text
from mcp_guard.pinning.store import DATABASE_NAME as PIN_DATABASE
from mcp_guard.policy import PolicyEngine
from mcp_guard.policy.definitions import definition_findings
from mcp_guard.policy.lint import policy_warnings, read_only_hint, window_notes
from mcp_guard.processes import POLICY_CHAIN_VARIABLE
from mcp_guard.ratelimit import LimitStoreUnavailable, open_limit_store
from mcp_guard.ratelimit.cli import add_limits_command, run_limits_command
from mcp_guard.ratelimit.limiter import names_client
from mcp_guard.sandbox import open_backend
from mcp_guard.sandbox.base import SandboxBackend, reject_allowed_hosts
from mcp_guard.sandbox.tool import tool_definition
from mcp_guard.setup import add_init_command, run_init_command
from mcp_guard.setup.outputs import git_work_tree
from mcp_guard.state.clock import HighWaterClock

DEFAULT_POLICY = "mcp-guard.toml"
DEFAULT_CLIENT = "default"
# Seconds `check` waits for `git check-ignore`.
GIT_TIMEOUT_SECONDS = 5
# How long `check` waits for downstream servers to list their tools.
CHECK_CONNECT_SECONDS = 60
# Lines of a failed server's stderr that `check` prints.
STDERR_LINES_SHOWN = 10
NO_HTTP_CLIENTS = (
    "no client in the policy file has api_key_hashes and there is no [gateway.oauth] table, so no "
    "request could prove who sent it. Create a key with `mcp-guard keys new` and add its hash to a "
    "client, configure [gateway.oauth], or set gateway.http.allow_unauthenticated_as to serve "
    "everyone as one client."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    args = _parser().parse_args(argv)
    args.log_level = (
        args.log_level or os.environ.get("MCP_GUARD_LOG_LEVEL") or _default_log_level(args.command)
    )
    if args.command == "keys":
        return _new_key()
    configure_logging(args.log_level)
    if args.command == "init":
        return run_init_command(args)
    if args.command == "check":
        if args.config is not None and args.config_option is not None:
            print(
                "mcp-guard check: name the policy file once, either as FILE or with --config", file=sys.stderr
            )
            return 2
        args.config = args.config or args.config_option or args.config_default
    try:
        # Only these commands start servers, which need the secrets. `limits` checks the one it needs.
        config = load_config(args.config, require_environment=args.command in {"run", "check"})
    except ConfigError as exc:
        # Only `run` would have started something. The other commands read or check state.
        print(str(exc) if args.command == "run" else exc.report(None), file=sys.stderr)
        return 2
    if args.command in ("run", "check"):
        loop = _enter_policy_chain(Path(args.config))
        if loop is not None:
            print(loop, file=sys.stderr)
            return 2
    redactor = Redactor(extra_keys=config.audit.redact_keys, extra_patterns=config.audit.redact_patterns)
    configure_logging(args.log_level, extra_processors=[redactor.redact_event])
    state_dir = Path(config.gateway.state_dir)
    if args.command == "run":
        return _run(config, args)
    if args.command == "audit":
        return anyio.run(
            lambda: run_audit_command(args, state_dir, key_env_var=args.key_env or config.audit.key_env)
        )
    if args.command == "pins":
        return anyio.run(lambda: run_pins_command(args, state_dir, policy_path=args.config))
    try:
        if args.command == "limits":
            return anyio.run(run_limits_command, config, args)
        if args.command == "approvals":
            return anyio.run(run_approvals_command, config, args)
    except BrokenPipeError:
        # The reader of the output (`head`, say) has gone: stop without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _check(config, args)


def _default_log_level(command: str) -> str:
    # init reports every server it could not reach in its summary, and the same errors as log
    # lines would only bury it. check prints a report too, so only warnings and errors join it.
    if command == "init":
        return "critical"
    return "warning" if command == "check" else "info"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-guard", description="An MCP gateway that guards tool calls.")
    parser.add_argument("--version", action="version", version=f"mcp-guard {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        help=(
            "lowest level of the JSON logs written to stderr (default: $MCP_GUARD_LOG_LEVEL, else info; "
            "init, which prints its own summary, writes logs only when asked)"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the gateway")
    _add_config_argument(run)
    run.add_argument(
        "--transport", choices=("stdio", "http"), default="stdio", help="how clients connect (default: stdio)"
    )
    run.add_argument("--host", help="address to bind with --transport http (default: gateway.http.host)")
    run.add_argument("--port", type=int, help="TCP port with --transport http (default: gateway.http.port)")
    run.add_argument(
        "--port-file", type=Path, help="with --transport http, write the bound port to this file"
    )
    run.add_argument(
        "--client",
        help="client profile a stdio gateway serves (default: gateway.default_client, else 'default')",
    )

    add_audit_commands(commands)
    _add_config_argument(commands.choices["audit"])
    add_pins_commands(commands)
    _add_config_argument(commands.choices["pins"])
    add_limits_command(commands)
    _add_config_argument(commands.choices["limits"])
    add_approvals_commands(commands)
    _add_config_argument(commands.choices["approvals"])
    add_init_command(commands)

    keys = commands.add_parser("keys", help="create an API key for a client that connects over HTTP")
    keys.add_argument(
        "action", choices=("new",), help="new: print a random key and the hash to put in the policy file"
    )

    check = commands.add_parser("check", help="validate a policy file and list the tools clients would see")
    _add_config_argument(check, positional=True)
    check.add_argument(
        "--offline", action="store_true", help="only validate the file; do not start the downstream servers"
    )
    return parser


def _add_config_argument(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    default = os.environ.get("MCP_GUARD_CONFIG", DEFAULT_POLICY)
    help_text = f"policy file (default: {default}, or $MCP_GUARD_CONFIG)"
    if positional:
        # `--config` is accepted too, as every other command takes it.
        parser.add_argument("config", nargs="?", default=None, help=help_text)
        parser.add_argument(
            "--config", "-c", dest="config_option", metavar="CONFIG", default=None, help=help_text
        )
        parser.set_defaults(config_default=default)
    else:
        parser.add_argument("--config", "-c", default=default, help=help_text)
        # Also after a subcommand (`audit search --config FILE`), where it overrides the default only
        # when given.
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for subcommand in action.choices.values():
                    subcommand.add_argument("--config", "-c", default=argparse.SUPPRESS, help=help_text)


def _new_key() -> int:
    key = new_api_key()
    print(f"API key (give it to the client; it is not stored anywhere): {key}")
    print(f'Hash for the policy file:  api_key_hashes = ["{hash_api_key(key)}"]')
    return 0


def _enter_policy_chain(policy: Path) -> str | None:
    """Add `policy` to the chain of gateways this process runs in, or return why it must not start.

    A server entry that runs mcp-guard with the policy of the gateway that starts it (a client
    configuration imported after it was routed through mcp-guard) would start gateways without end.
    """
    chain = [entry for entry in os.environ.get(POLICY_CHAIN_VARIABLE, "").split(os.pathsep) if entry]
    path = str(policy.expanduser().resolve())
    if path in chain:
        return (
            f"The gateway did not start: it was started as a server of a gateway that runs the same policy "
            f"{path}, and would start itself again without end. Remove the server entry that runs "
            "mcp-guard from that policy's [servers]."
        )
    os.environ[POLICY_CHAIN_VARIABLE] = os.pathsep.join([*chain, path])
    return None


def _run(config: GatewayConfig, args: argparse.Namespace) -> int:
    from mcp_guard.gateway.serve import serve_http, serve_stdio

    client = args.client or config.gateway.default_client or DEFAULT_CLIENT
    if args.transport == "stdio" and client not in config.clients:
        # Allowed (such a client gets the rules for every client), but most often a typo.
        structlog.get_logger(module=__name__).warning(
            "client_not_defined",
            client=client,
            consequence='only rules with clients = ["*"] apply to it',
            hint=suggestion(client, config.clients).strip(" ()") or None,
        )

    anonymous = config.gateway.http.allow_unauthenticated_as
    try:
        directory = ClientDirectory(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.transport == "http" and anonymous is None and not directory.has_credentials:
        print(f"Not serving HTTP: {NO_HTTP_CLIENTS}", file=sys.stderr)
        return 2
    try:
        if args.transport == "stdio":
            anyio.run(lambda: serve_stdio(config, client=client, policy_path=args.config))
        else:
            anyio.run(
                lambda: serve_http(
                    config,
                    client=client,
                    host=args.host,
                    port=args.port,
                    port_file=args.port_file,
                    policy_path=args.config,
                )
            )
    except (GuardError, ExceptionGroup) as exc:
        failure = _startup_failure(exc)
        if failure is None:
            raise
        if isinstance(failure, AuditUnavailable):
            # The generic text speaks of a denied call, and no call has been made yet.
            fix = failure.fix or "Fix the state directory, or give the gateway another one."
            print(
                f"The gateway did not start: the audit trail cannot be used ({failure.reason}). {fix}",
                file=sys.stderr,
            )
            return 1
        print(str(failure), file=sys.stderr)
        return 2 if isinstance(failure, ConfigError) else 1
    return 0


def _startup_failure(exc: BaseException) -> GuardError | None:
    """Return the gateway error that stopped the gateway, looking inside task-group exception groups."""
    if isinstance(exc, GuardError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
    return None


def _check(config: GatewayConfig, args: argparse.Namespace) -> int:
    try:
        directory = ClientDirectory(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    count = len(config.servers)
    print(f"{args.config}: valid, {count} {'server' if count == 1 else 'servers'} configured")
    stdio_client = config.gateway.default_client or DEFAULT_CLIENT
    if stdio_client in config.clients:
        print(f"stdio client: {stdio_client} (mcp-guard run --client NAME serves another)")
    else:
        print(
            f'stdio client: {stdio_client}, which the policy does not define, so only rules with clients = ["*"] '
            "apply to it (set gateway.default_client, or mcp-guard run --client NAME)"
        )
    print(f"HTTP clients: {_http_clients(config, directory)}")
    print(f"state directory: {Path(config.gateway.state_dir)}")
    warnings = exposed_places(config, args.config)
    if not any("git work tree" in warning for warning in warnings):
        warnings += state_dir_in_work_tree(config)
    for warning in warnings:
        print(f"  WARNING {escape_text(warning)}")
    if config.sandbox is not None:
        print(f"run_code backend: {_sandbox_backend(config.sandbox)}")
    if args.offline:
        _print_windows(config, PolicyEngine(config.rules, config.clients, config.servers))
        missing = _print_missing_variables(config)
        return 1 if missing or _check_sandbox_settings(config.sandbox) else 0
    return anyio.run(_check_servers, config)


def exposed_places(config: GatewayConfig, policy_path: str) -> list[str]:
    """Return a warning for each stdio server given a folder that contains a protected place.

    The gateway refuses calls that name such a place, but a tool that searches or lists the
    folder can still reach it.
    """
    # mcp-guard's own places count before they exist: the gateway creates the state directory
    # when it starts, and init writes policies to its folder.
    places = [
        place
        for place in protected_places(config, policy_path=policy_path)
        if place.own or os.path.exists(place.path)
    ]
    policy_folder = Path(policy_path).resolve().parent
    # One warning per folder, naming every server given it.
    exposed: dict[Path, tuple[list[str], list[str]]] = {}
    for server_id, server in config.servers.items():
        if not isinstance(server, StdioServerConfig):
            continue
        table = {"cwd": server.cwd, "args": server.args}
        for folder in folders_given(table, Path.cwd(), policy_folder):
            inside = [
                f"{place.description} ({place.path})"
                for place in places
                if Path(place.path).resolve().is_relative_to(folder)
            ]
            if inside:
                servers, _ = exposed.setdefault(folder, ([], inside))
                if server_id not in servers:
                    servers.append(server_id)
    warnings: list[str] = []
    for folder, (servers, inside) in exposed.items():
        named = " ".join(["server" if len(servers) == 1 else "servers", _listed([repr(s) for s in servers])])
        verb = "is" if len(servers) == 1 else "are"
        warning = (
            f"{named} {verb} given {folder}, which contains {_listed(list(dict.fromkeys(inside)))}. "
            "Calls that name them are refused, but a tool that searches or lists the folder can "
            f"still reach them: give {'the server' if len(servers) == 1 else 'each server'} a folder without them"
        )
        if (folder / ".git").exists():
            warning += (
                f". {folder} is a git work tree, so `git add .` there would commit them too: move "
                "gateway.state_dir and the policy out of it"
            )
        warnings.append(warning)
    return warnings


def state_dir_in_work_tree(config: GatewayConfig) -> list[str]:
    """Return a warning if the state directory lies in a git work tree that does not ignore it."""
    state = Path(config.gateway.state_dir).resolve()
    root = git_work_tree(state)
    # A file inside, so that a pattern for folders only (`state/`) matches before the folder exists.
    if root is None or _ignored_by_git(root, state / "audit.key"):
        return []
    return [
        f"the state directory {state} is inside the git work tree {root}, which does not ignore it: "
        "`git add` there would commit the audit and approval keys. List it in .gitignore, or move "
        "gateway.state_dir out of the work tree"
    ]


def _ignored_by_git(root: Path, path: Path) -> bool:
    """Return whether git ignores `path` in the work tree `root`, or False if git cannot tell."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "-q", str(path)],
            capture_output=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _print_missing_variables(config: GatewayConfig) -> int:
    """Print each server that cannot start for want of an environment variable; return how many."""
    failed = 0
    for server_id, server in config.servers.items():
        problems = server_environment_problems(server_id, server, os.environ)
        if problems:
            failed += 1
            print(f"\n[{server_id}] NOT AVAILABLE: {'; '.join(problems)}")
    return failed


def _sandbox_backend(sandbox: SandboxSettings) -> str:
    """Return the backend that runs code here, with the reason when `backend = "auto"` chose it."""
    chosen = sandbox.chosen_backend(dict(os.environ))
    if sandbox.backend != "auto":
        return chosen
    variable = sandbox.e2b.api_key_from
    return f"{chosen} (auto: ${variable} is {'set' if chosen == 'e2b' else 'not set'})"


def _check_sandbox_settings(sandbox: SandboxSettings | None) -> int:
    """Print the sandbox settings that the chosen backend rejects, without starting it. Return 1 if any."""
    if sandbox is None:
        return 0
    chosen = sandbox.chosen_backend(dict(os.environ))
    if chosen == "e2b":
        return 0
    try:
        reject_allowed_hosts(chosen, sandbox.allowed_hosts)
    except SandboxError as exc:
        print(f"\n[sandbox] NOT AVAILABLE: {exc}")
        return 1
    return 0


def _http_clients(config: GatewayConfig, directory: ClientDirectory) -> str:
    """Return which clients can connect over HTTP, as `run --transport http` would serve them."""
    anonymous = config.gateway.http.allow_unauthenticated_as
    keyed = directory.keyed_clients
    subjects = [name for name, client in config.clients.items() if client.oauth_subjects]
    ways = []
    if keyed:
        ways.append(f"{', '.join(keyed)} with API keys")
    if config.gateway.oauth is not None and subjects:
        ways.append(f"{', '.join(subjects)} with OAuth tokens")
    if anonymous is not None:
        ways.append(f"every request without credentials as {anonymous!r}")
    if ways:
        return "; ".join(ways)
    if directory.has_credentials:
        return "none yet: [gateway.oauth] is set, but no client lists oauth_subjects"
    return (
        "none, which matters only for `mcp-guard run --transport http`: give a client api_key_hashes "
        "(`mcp-guard keys new`), or configure [gateway.oauth]"
    )


async def _check_servers(config: GatewayConfig) -> int:
    from mcp_guard.downstream.registry import DownstreamRegistry

    failed = 0
    builtin: list[ExportedTool] = []
    listings: dict[str, list[dict[str, Any]]] = {}
    if config.sandbox is not None:
        # Only checked, never started: starting would also remove sandboxes that look orphaned.
        backend = open_backend(config.sandbox, os.environ)
        try:
            failed += await _print_sandbox(backend)
        finally:
            await backend.aclose()
        definition = tool_definition(config.sandbox, backend.languages, backend.kind)
        builtin.append(export_builtin_tool(SANDBOX_SERVER_ID, definition))
        listings[SANDBOX_SERVER_ID] = [definition]
    failed += await _print_limit_store(config)
    stderr = ServerStderr()
    with anyio.move_on_after(CHECK_CONNECT_SECONDS):
        async with DownstreamRegistry(config, builtin=builtin, errlog=stderr).running() as registry:
            for server_id, status in registry.status().items():
                if status["state"] != "ready":
                    failed += 1
                    print(f"\n[{server_id}] NOT AVAILABLE: {status['last_error']}")
                    lines = stderr.lines.get(server_id)
                    if lines:
                        print("  its last lines on stderr:")
                        print("\n".join(f"    {escape_text(line)}" for line in lines))
                    continue
                print(f"\n[{server_id}] ready, protocol {status['protocol']}, {status['tools']} tools")
                listings[server_id] = list(registry.connection(server_id).listing.tools)
                _print_findings(listings[server_id])
            engine = PolicyEngine(config.rules, config.clients, config.servers)
            _print_policy_warnings(policy_warnings(config, listings, engine))
            await _print_clients(config, registry.catalog, engine)
    return 1 if failed else 0


class ServerStderr(io.StringIO):
    """A sink for the servers' stderr that keeps each server's last lines for `check` to print.

    `check` prints them only for a server that failed, so its report is not interleaved with what
    every server prints as it starts. It reads the `[server id] line` lines the stdio transport writes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, deque[str]] = {}

    def write(self, text: str) -> int:
        for line in text.splitlines():
            server_id, separator, rest = line.removeprefix("[").partition("] ")
            if line.startswith("[") and separator:
                self.lines.setdefault(server_id, deque(maxlen=STDERR_LINES_SHOWN)).append(rest)
        return len(text)


async def _print_limit_store(config: GatewayConfig) -> int:
    """Print whether a Redis limit store responds, and return 1 when it does not.

    A gateway starts without it, then rejects every limited call (or lets it through, with
    `on_store_failure = "allow"`), so check reports it as a failure. The SQLite store lives
    in the state directory, which the gateway creates when it starts.
    """
    limits = config.limits
    if limits.store != "redis" or not limits.rules:
        return 0
    try:
        with anyio.fail_after(CHECK_CONNECT_SECONDS):
            async with open_limit_store(limits, Path(config.gateway.state_dir)) as store:
                await store.time_mark()
    except LimitStoreUnavailable as exc:
        print(f"\n[limits] NOT AVAILABLE: {exc}{_store_failure_effect(limits.on_store_failure)}")
        return 1
    except TimeoutError:
        print(
            f"\n[limits] NOT AVAILABLE: Redis at {limits.redis_url} did not answer within "
            f"{CHECK_CONNECT_SECONDS:g} s.{_store_failure_effect(limits.on_store_failure)}"
        )
        return 1
    print(f"\n[limits] Redis at {limits.redis_url} answers")
    return 0


def _store_failure_effect(on_store_failure: str) -> str:
    if on_store_failure == "allow":
        return ' Until it answers, calls go through without rate limits (on_store_failure = "allow").'
    return " Until it answers, the gateway rejects every call that a limit applies to."


async def _print_sandbox(backend: SandboxBackend) -> int:
    """Print whether the run_code backend can run code here; return 1 when it cannot."""
    try:
        with anyio.fail_after(CHECK_CONNECT_SECONDS):
            await backend.check()
    except SandboxError as exc:
        print(f"\n[sandbox] NOT AVAILABLE: {exc}")
        return 1
    except TimeoutError:
        print(f"\n[sandbox] NOT AVAILABLE: the {backend.kind!r} backend's check timed out")
        return 1
    print(f"\n[sandbox] {backend.kind} backend ready, languages: {', '.join(sorted(backend.languages))}")
    return 0


def _print_findings(tools: Sequence[Mapping[str, Any]]) -> None:
    """Print the tools whose texts look like instructions aimed at the model."""
    for tool in tools:
        for finding in definition_findings(tool):
            print(f"  WARNING {escape_text(str(tool.get('name')))}: {escape_text(finding)}")


def _print_policy_warnings(warnings: Sequence[str]) -> None:
    """Print the rule and server entries that name tools or arguments no server has."""
    if warnings:
        print("\npolicy:")
    for warning in warnings:
        print(f"  WARNING {escape_text(warning)}")


def _decision_note(
    engine: PolicyEngine, client: str, tool: ExportedTool, now: datetime, first_use: dict[str, datetime]
) -> str:
    """Return the note for a visible tool whose calls ask a person or notify the client (the strictest rule wins)."""
    decisions = engine.rule_decisions(
        client,
        tool.server,
        tool.name,
        annotations=tool.definition.get("annotations"),
        now=now,
        first_use=first_use,
    )
    if "approve" in decisions:
        return "  (asks for approval)"
    if "notify" in decisions:
        return "  (notifies the client)"
    return ""


async def _print_clients(config: GatewayConfig, catalog: Catalog, engine: PolicyEngine) -> None:
    """Print, for each client, the exported tools its rules let it see now, and which are withheld."""
    first_uses, now = _print_windows(config, engine)
    pin_status = await _pin_statuses(config, catalog)
    if not config.clients:
        print(
            "\nNo clients are defined, so every tool is hidden from everyone. Add [clients.NAME] and rules."
        )
    for client in config.clients:
        visible = [
            tool
            for tool in catalog.tools.values()
            if engine.visible(
                client,
                tool.server,
                tool.name,
                annotations=tool.definition.get("annotations"),
                now=now,
                first_use=first_uses.get(client, {}),
            )
        ]
        print(f"\nclient {client} sees {len(visible)} {'tool' if len(visible) == 1 else 'tools'}:")
        for tool in visible:
            status = (
                "approved"
                if tool.server == SANDBOX_SERVER_ID
                else pin_status.get((tool.server, tool.name), "approved")
            )
            note = (
                _decision_note(engine, client, tool, now, first_uses.get(client, {}))
                if status == "approved"
                else f"  (withheld: {status} definition, see mcp-guard pins review)"
            )
            print(f"  {tool.exported}{note}")
        for tool in catalog.tools.values():
            if tool in visible:
                continue
            annotations = tool.definition.get("annotations")
            missing = engine.rules_missing_write(client, tool.server, tool.name, annotations=annotations)
            if missing:
                print(
                    f"  hidden: {tool.exported}, which rule {missing[0]!r} names without write = true. "
                    "Such a rule grants only read-only tools; add write = true to it to grant this one."
                    + read_only_hint(config, tool.server, tool.name)
                )
        _print_limits(config, client)


def _print_limits(config: GatewayConfig, client: str) -> None:
    """Print the rate limits that apply to `client`, one line per limit entry."""
    groups = config.clients[client].groups
    for rule in config.limits.rules:
        if not names_client(rule, client, groups):
            continue
        scope = (
            ""
            if rule.server == "*"
            else f" on {rule.server}" + ("" if "*" in rule.tools else f" ({', '.join(rule.tools)})")
        )
        dimensions = ", ".join(f"{name} = {value:g}" for name, value in rule.dimensions().items())
        counted = "shared by all clients" if rule.per == "global" else f"counted per {rule.per}"
        print(f"  limit {rule.name!r}{scope}, {counted}: {dimensions}")


def _print_windows(
    config: GatewayConfig, engine: PolicyEngine
) -> tuple[dict[str, dict[str, datetime]], datetime]:
    """Print the rules outside their time windows now; return the first uses and the time used."""
    first_uses, now = _read_usage(Path(config.gateway.state_dir))
    notes = window_notes(config, engine, now, first_uses)
    if notes:
        print(f"\ntime windows at {now.isoformat(timespec='seconds')}:")
    for note in notes:
        print(f"  {escape_text(note)}")
    return first_uses, now


def _read_usage(state_dir: Path) -> tuple[dict[str, dict[str, datetime]], datetime]:
    """Return each client's first uses of time-limited rules and the gateway's time, as it would see them.

    The state file is opened read-only and never created, so a running gateway is not disturbed.
    The time is the later of the system time and the high-water mark the gateway stored.
    """
    from mcp_guard.gateway.serve import USAGE_FILE

    path = state_dir.resolve() / USAGE_FILE
    first_uses: dict[str, dict[str, datetime]] = {}
    clock = HighWaterClock()
    if not path.exists():
        return first_uses, clock.now()
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            for client, rule, first_use in db.execute("SELECT client, rule, first_use FROM rule_first_use"):
                first_uses.setdefault(client, {})[rule] = datetime.fromisoformat(first_use)
            mark = db.execute("SELECT high_water FROM clock WHERE id = 1").fetchone()
        if mark is not None:
            clock.high_water = datetime.fromisoformat(mark[0]).astimezone(UTC)
    except (sqlite3.Error, ValueError) as exc:
        print(
            f"\nThe state file {str(path)!r} cannot be read ({exc}), so tools are listed as if no client "
            "had used a rule with active_for_seconds yet."
        )
    return first_uses, clock.now()


async def _pin_statuses(config: GatewayConfig, catalog: Catalog) -> dict[tuple[str, str], str]:
    """Return the pin status of each tool, if the gateway has pinned definitions before."""
    state_dir = Path(config.gateway.state_dir)
    if not (state_dir / PIN_DATABASE).exists():
        # Without servers there is nothing to pin, so the note is left out.
        if config.servers:
            print(
                "\nNo tool definitions are pinned yet: the gateway trusts each server's tools on first sight."
            )
        return {}
    statuses: dict[tuple[str, str], str] = {}
    async with PinStore.in_state_dir(state_dir) as pins:
        for tool in catalog.tools.values():
            statuses[(tool.server, tool.name)] = await pins.status(tool.server, tool.name, tool.digest)
    return statuses
