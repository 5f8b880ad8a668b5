"""Least privilege on the call path: pins, visibility, policy decisions and argument checks.

The guard answers two questions. Which tools may this client see? Only those
whose definition matches its approved pin and that some active rule grants. And
what happens to this call? The pure `PolicyEngine` decides. This module keeps
the state the engine needs (pins, first use of time-limited rules, a clock that
never runs backwards), validates arguments against the pinned input schema, and
carries the decision out. Deciding runs before the audit stage, so the intent
row records the decision; enforcing runs after it, so denials are recorded.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from mcp_guard.config.models import GatewayConfig, HttpServerConfig, StdioServerConfig
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID
from mcp_guard.downstream.catalog import ExportedTool
from mcp_guard.downstream.registry import DownstreamRegistry
from mcp_guard.errors import GuardError
from mcp_guard.gateway.pipeline import Handler, ToolCall, ToolResult, tool_error
from mcp_guard.locations import (
    APP_FOLDER,
    CLIENT_FILE_DESCRIPTIONS,
    client_config_beside,
    client_settings,
    config_home,
    folders_given,
    state_home,
)
from mcp_guard.pinning import PinStore
from mcp_guard.policy import Allow, Deny, PolicyEngine, RequireApproval
from mcp_guard.policy.protected import FolderWatch, ProtectedPaths, ProtectedPlace, missing_folders
from mcp_guard.state.usage import UsageStore

log = structlog.get_logger(module=__name__)

# Decisions that reach the calling client during the call: a question to a person, a log message.
_INVOLVE_CALLER = frozenset({"approve", "notify"})


def _grants(decisions: frozenset[str]) -> bool:
    """Return whether the decisions of the rules that apply to a tool let a client see it."""
    return bool(decisions) and "deny" not in decisions


# Arguments nested deeper than this, or with more values than this, are rejected before any
# schema validation runs, so a hostile argument cannot exhaust the stack or the CPU.
MAX_ARGUMENT_DEPTH = 64
MAX_ARGUMENT_VALUES = 100_000
# How often the gateway looks for pin approvals made with `mcp-guard pins approve`.
PIN_POLL_SECONDS = 2.0
# Maximum sleep between checks of time-limited rules, so a window that a first call opens is seen
# at most this late.
WINDOW_POLL_SECONDS = 30.0
# Clients are notified a little after a window's edge, so the edge is past when they list again.
WINDOW_MARGIN_SECONDS = 0.05


class PolicyGuard:
    """Pins, visibility and decisions for every client of one gateway.

    Args:
        protected: The places no call may name; by default those `protected_places` finds for
            `config` alone, without the policy file. The folders on the way to them are watched.
    """

    def __init__(
        self,
        config: GatewayConfig,
        engine: PolicyEngine,
        pins: PinStore,
        usage: UsageStore,
        protected: ProtectedPaths | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._pins = pins
        self._usage = usage
        self.protected = protected if protected is not None else ProtectedPaths(protected_places(config))
        self._watch = FolderWatch(self.protected.places, stop_at=[str(Path.home())])
        self._moved: str | None = None
        cwd = os.getcwd()
        self._bases = {
            server_id: _relative_bases(server, cwd) for server_id, server in config.servers.items()
        }
        self._gateway_bases = (cwd, str(Path.home()))
        self._approved: dict[tuple[str, str], str] = {}
        self._validators: dict[str, Draft202012Validator | None] = {}

    # Visibility

    def visible(self, client: str, tool: ExportedTool) -> bool:
        """Return whether `client` may see (and so call) `tool` now.

        A tool is visible when an active rule grants it and no active deny rule names it.
        """
        return self.pinned(tool) and _grants(self._rule_decisions(client, tool))

    def _rule_decisions(self, client: str, tool: ExportedTool) -> frozenset[str]:
        return self._engine.rule_decisions(
            client,
            tool.server,
            tool.name,
            annotations=tool.definition.get("annotations"),
            now=self._usage.clock.now(),
            first_use=self._usage.first_uses(client),
        )

    def pinned(self, tool: ExportedTool) -> bool:
        """Return whether the tool's current definition is the approved one.

        The gateway's own run_code tool is defined by the policy file itself, so it needs no pin.
        """
        if tool.server == SANDBOX_SERVER_ID:
            return True
        return self._approved.get((tool.server, tool.name)) == tool.digest

    async def observe(self, registry: DownstreamRegistry) -> bool:
        """Record every server's current tool definitions in the pin store.

        Returns:
            Whether the set of approved definitions changed.
        """
        before = dict(self._approved)
        approved: dict[tuple[str, str], str] = {}
        for server_id, connection in registry.connections.items():
            tools = connection.listing.tools
            if not tools:
                continue
            allow_new = self._config.servers[server_id].allow_new_tools
            try:
                report = await self._pins.observe(server_id, tools, allow_new_tools=allow_new)
            except GuardError as exc:
                # Fail closed: without the pin store no tool of this server counts as approved.
                log.error("pins_unavailable", server=server_id, error=str(exc))
                continue
            # The catalogue hashed each definition when it was built, so reuse those hashes.
            digests = {t.name: t.digest for t in registry.catalog.tools.values() if t.server == server_id}
            for name, status in report.statuses.items():
                if status == "approved" and name in digests:
                    approved[(server_id, name)] = digests[name]
            for name in report.withheld:
                log.warning(
                    "tool_withheld",
                    server=server_id,
                    tool=name,
                    status=report.statuses.get(name),
                    fix="review it with `mcp-guard pins review`",
                )
        self._approved = approved
        return approved != before

    async def watch_pins(
        self, registry: DownstreamRegistry, on_change: Callable[[], Awaitable[None]]
    ) -> None:
        """Re-read the pins whenever another process (the `pins` command) changes them."""
        version = await self._pins.data_version()
        while True:
            await anyio.sleep(PIN_POLL_SECONDS)
            try:
                current = await self._pins.data_version()
            except GuardError as exc:
                log.error("pins_unavailable", error=str(exc))
                continue
            if current != version:
                version = current
                if await self.observe(registry):
                    await on_change()

    async def watch_windows(self, clients: Iterable[str], on_change: Callable[[], Awaitable[None]]) -> None:
        """Tell clients their tool lists changed whenever a time-limited rule starts or ends."""
        while True:
            now = self._usage.clock.now()
            changes = [
                change
                for client in clients
                if (change := self._engine.next_change(client, now, self._usage.first_uses(client)))
                is not None
            ]
            if not changes:
                # A first call can start a new window, so look again now and then.
                await anyio.sleep(WINDOW_POLL_SECONDS)
                continue
            wait = (min(changes) - now).total_seconds()
            await anyio.sleep(min(max(wait, 0.0) + WINDOW_MARGIN_SECONDS, WINDOW_POLL_SECONDS))
            if self._usage.clock.now() >= min(changes):
                log.info("rule_window_changed", at=min(changes).isoformat())
                await on_change()

    def grants(self, client: str, server: str, tool: str) -> bool:
        """Return whether an active rule would let `client` see `tool` of `server`, whose definition is unknown."""
        decisions = self._engine.rule_decisions(
            client,
            server,
            tool,
            annotations=None,
            now=self._usage.clock.now(),
            first_use=self._usage.first_uses(client),
        )
        return _grants(decisions)

    def deny_rule(self, client: str, tool: ExportedTool) -> str | None:
        """Return the deny rule that hides `tool` from `client` now, or None."""
        return self._engine.deny_rule(
            client,
            tool.server,
            tool.name,
            annotations=tool.definition.get("annotations"),
            now=self._usage.clock.now(),
            first_use=self._usage.first_uses(client),
        )

    # The call path

    def plain_call(self, client: str, tool: ExportedTool) -> bool:
        """Return whether `client` may see `tool` now and no rule for it could involve the client.

        Such a call is never sent for a person's approval and never notifies the client, so it
        needs nothing of the client's session during the call.
        """
        if not self.pinned(tool):
            return False
        decisions = self._rule_decisions(client, tool)
        return _grants(decisions) and _INVOLVE_CALLER.isdisjoint(decisions)

    async def decide(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Stage: decide the call and record the decision on it, leaving rejection to `enforce`."""
        tool = call.tool
        if not self.pinned(tool):
            call.decision, call.rule = "deny", None
            call.detail = (
                f"the definition of {tool.exported!r} changed and awaits review (mcp-guard pins review)"
            )
            return await next_handler(call)
        decision = self._engine.decide(
            call.client,
            tool.server,
            tool.name,
            annotations=tool.definition.get("annotations"),
            arguments=call.arguments,
            now=self._usage.clock.now(),
            first_use=self._usage.first_uses(call.client),
            input_schema=tool.definition.get("inputSchema"),
        )
        call.decision, call.rule = decision.kind, decision.rule
        call.policy = decision
        sent = call.arguments
        if decision.arguments is not None:
            # Relative paths joined to a rule's path_base: every later stage, the audit trail and
            # the server see the path that was checked.
            call.arguments = dict(decision.arguments)
        if isinstance(decision, Deny):
            call.detail = decision.reason
            return await next_handler(call)
        # Both forms: the joined path is what the server gets, the one sent is what was asked for.
        problem = self.protected_problem(tool.server, sent)
        if problem is None and decision.arguments is not None:
            problem = self.protected.problem(
                call.arguments, self._bases.get(tool.server, self._gateway_bases)
            )
        if problem is not None:
            call.decision, call.rule, call.detail = "deny", None, problem
            call.policy = Deny(rule=None, reason=problem)
        return await next_handler(call)

    def protected_problem(self, server: str, arguments: Mapping[str, Any]) -> str | None:
        """Return why a call with `arguments` to `server` must be rejected to keep the protected places safe.

        Either the arguments name a protected place, or a folder on the way to one was moved or
        replaced since the gateway started. Until that folder is back, every call is rejected.
        """
        moved = self._watch.changed()
        if moved != self._moved:
            if moved is not None:
                log.error("protected_folder_moved", folder=moved, fix="move it back, or restart the gateway")
            else:
                log.warning("protected_folder_restored", folder=self._moved)
            self._moved = moved
        if moved is not None:
            return (
                f"the folder {moved} was moved or replaced while the gateway ran, so protected files may "
                "lie under another name now; every call is rejected until it is back or the gateway restarts"
            )
        return self.protected.problem(arguments, self._bases.get(server, self._gateway_bases))

    async def enforce(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Stage: reject what the decision does not allow, check the arguments, then pass the call on."""
        decision = call.policy
        if call.decision == "deny" or decision is None or isinstance(decision, Deny):
            return self._reject(call, call.detail or "no rule allows this call")
        problem = self._argument_problem(call.tool, call.arguments)
        if problem is not None:
            return self._reject(call, problem)
        if isinstance(decision, RequireApproval):
            # The approval stage, after the rate limits, decides whether the call runs.
            return await next_handler(call)
        if decision.starts_rule is not None:
            await self._usage.record_first_use(call.client, decision.starts_rule, self._usage.clock.now())
        await self._usage.save_high_water()
        if isinstance(decision, Allow) and decision.kind == "notify":
            await _notify(call, decision.rule)
        return await next_handler(call)

    async def refuse_unapproved(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Stage: refuse calls that need a person's approval.

        NOTE: the approval flow is not built yet, so such calls are refused, which is the
        fail-closed reading of "approve".
        """
        if isinstance(call.policy, RequireApproval):
            reason = f"rule {call.policy.rule!r} requires a person's approval, which is not available yet"
            return self._reject(call, reason)
        return await next_handler(call)

    def _reject(self, call: ToolCall, reason: str) -> ToolResult:
        call.outcome, call.detail = "denied", reason
        log.info(
            "tool_call_denied",
            call_id=call.call_id,
            client=call.client,
            tool=call.tool.exported,
            reason=reason,
        )
        return tool_error(f"Denied by mcp-guard: {reason}")

    def _argument_problem(self, tool: ExportedTool, arguments: Mapping[str, Any]) -> str | None:
        """Return why `arguments` do not fit the tool's pinned input schema, or None."""
        size_problem = _size_problem(arguments)
        if size_problem is not None:
            return size_problem
        validator = self._validator(tool)
        if validator is None:
            return None
        error = best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = "arguments" + "".join(f"[{part!r}]" for part in error.absolute_path)
        return f"invalid arguments for {tool.exported!r} at {where}: {error.message[:300]}"

    def _validator(self, tool: ExportedTool) -> Draft202012Validator | None:
        if tool.digest not in self._validators:
            schema = tool.definition.get("inputSchema")
            if not isinstance(schema, dict):
                self._validators[tool.digest] = None
                return None
            try:
                Draft202012Validator.check_schema(schema)
                self._validators[tool.digest] = Draft202012Validator(schema)
            except SchemaError:
                # NOTE: such a tool's calls are forwarded without schema validation; the rules'
                # argument constraints still apply.
                log.warning("input_schema_invalid", server=tool.server, tool=tool.name)
                self._validators[tool.digest] = None
        return self._validators[tool.digest]


def _relative_bases(server: StdioServerConfig | HttpServerConfig, cwd: str) -> tuple[str, ...]:
    """Return the folders a server may take a relative path from.

    Its working folder, each folder it is given in its arguments (the published filesystem
    server resolves relative paths against those), and the home folder.
    """
    if not isinstance(server, StdioServerConfig):
        return (cwd, str(Path.home()))
    start = server.cwd or cwd
    folders = folders_given({"cwd": server.cwd, "args": server.args}, Path(start), Path(start))
    return tuple(dict.fromkeys([start, *map(str, folders), str(Path.home())]))


def protected_places(
    config: GatewayConfig,
    *,
    policy_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> list[ProtectedPlace]:
    """Return the places no tool call may name: mcp-guard's own files, the client settings that
    start it, and the policy's `protected_paths`.

    Args:
        policy_path: The policy file the gateway runs; None when it was built in memory.
        environ: Where the XDG folders are read from (default: this process's environment).
        cwd: The gateway's working folder, where a project's client settings lie (default: the
            current folder).
    """
    environ = os.environ if environ is None else environ
    folder = Path(cwd if cwd is not None else os.getcwd())
    places = [
        ProtectedPlace(config.gateway.state_dir, "mcp-guard's state directory", folder=True, own=True),
        ProtectedPlace(
            str(config_home(environ) / APP_FOLDER),
            "mcp-guard's folder of policies and client settings",
            folder=True,
            own=True,
        ),
        ProtectedPlace(
            str(state_home(environ) / APP_FOLDER),
            "mcp-guard's folder of state directories",
            folder=True,
            own=True,
        ),
        *(
            ProtectedPlace(str(path), _client_file_description(path), folder=is_folder)
            for path, is_folder in client_settings(environ, folder)
        ),
    ]
    if policy_path is not None:
        policy = Path(policy_path).absolute()
        places.append(ProtectedPlace(str(policy), "mcp-guard's policy file", folder=False))
        places.append(
            ProtectedPlace(str(client_config_beside(policy)), "mcp-guard's client settings", folder=False)
        )
    places.extend(
        ProtectedPlace(path, "a path the policy protects (gateway.protected_paths)", folder=True)
        for path in config.gateway.protected_paths
    )
    return places + missing_folders(places)


def _client_file_description(path: Path) -> str:
    return CLIENT_FILE_DESCRIPTIONS.get(f"{path.parent.name}/{path.name}", "an MCP client's settings")


def _size_problem(value: Any) -> str | None:
    """Check depth and size with an explicit stack, so no value can exhaust the interpreter's stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_ARGUMENT_DEPTH:
            return f"the arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
        if count > MAX_ARGUMENT_VALUES:
            return f"the arguments contain more than {MAX_ARGUMENT_VALUES:,} values"
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


async def _notify(call: ToolCall, rule: str) -> None:
    log.warning(
        "tool_call_notify", call_id=call.call_id, client=call.client, tool=call.tool.exported, rule=rule
    )
    if call.notify is not None:
        await call.notify(f"mcp-guard: {call.tool.exported} was called under rule {rule!r}, which notifies.")
