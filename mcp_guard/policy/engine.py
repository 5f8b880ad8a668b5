"""The policy engine: which tools a client may see, and what happens to each call.

`PolicyEngine` is built once from the policy file and is pure and synchronous:
no I/O, no clock and no state of its own. The one exception is `path_under`,
which resolves paths against the filesystem through the injected resolver.

The caller passes the time and keeps the only state rules need: for each client,
when it first called under each rule with `active_for_seconds`. Decisions are
made in four steps: find the matching rules, evaluate each one (a rule whose
argument constraints the call breaks yields a `Deny` naming it), pick the
strictest result (deny > approve > notify > auto, ties going to the rule that
comes first in the file), and deny by default when no rule matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from mcp_guard.config.rules import WILDCARD, ClientConfig, RuleConfig, RuleDecision
from mcp_guard.policy.constraints import ArgumentFences
from mcp_guard.policy.decisions import SEVERITY, Allow, Decision, Deny, RequireApproval
from mcp_guard.policy.paths import PathResolver, default_resolver

FirstUse = Mapping[str, datetime]
"""One client's first call under each rule with `active_for_seconds`, by rule name."""


class ServerSettings(Protocol):
    """The part of a server's configuration the engine reads (`StdioServerConfig`, `HttpServerConfig`)."""

    @property
    def read_only_tools(self) -> Sequence[str]: ...

    @property
    def trust_annotations(self) -> bool: ...


@dataclass(frozen=True)
class _Rule:
    """A rule from the file with its sets and patterns built once."""

    name: str
    decision: RuleDecision
    everyone: bool
    clients: frozenset[str]
    groups: frozenset[str]
    server: str
    tools: frozenset[str] | None
    """None when the rule names "*"."""
    write: bool
    not_before: datetime | None
    not_after: datetime | None
    active_for: timedelta | None
    fences: ArgumentFences


@dataclass(frozen=True)
class _ReadOnly:
    tools: frozenset[str]
    trust_annotations: bool


class PolicyEngine:
    """Compiled rules that decide which tools a client can list and what happens to each of its calls.

    Times: `now` must carry a timezone and must come from a clock that never goes
    backwards (keep a high-water mark of the wall clock). Every window is a fixed
    instant compared with `now`: a rule is active from `not_before` to `not_after`
    inclusive, and until `active_for_seconds` after its first use. So once `now`
    has passed a rule's end, the rule stays inactive for every later `now`.

    First use: when a decision's `starts_rule` is set, the caller records the time
    of that call as the rule's first use for the client, if none is recorded yet,
    and never overwrites it. The record must survive restarts and reconnections,
    or a client could restart its window by reconnecting.
    """

    def __init__(
        self,
        rules: Sequence[RuleConfig],
        clients: Mapping[str, ClientConfig],
        servers: Mapping[str, ServerSettings],
        *,
        resolve_path: PathResolver = default_resolver,
    ) -> None:
        """Build the engine from the `rules`, `clients` and `servers` sections of the policy file.

        Args:
            rules: The rules in file order; order breaks ties between equally strict results.
            clients: Client settings by id. A client id missing here belongs to no group, so only
                rules with "*" in `clients` match it.
            servers: Server settings by id; only `read_only_tools` and `trust_annotations` are read.
            resolve_path: Turns an absolute path into its canonical form for `path_under`.
        """
        self._rules = tuple(_compile_rule(rule, resolve_path) for rule in rules)
        self._groups = {client_id: frozenset(client.groups) for client_id, client in clients.items()}
        self._read_only = {
            server_id: _ReadOnly(frozenset(server.read_only_tools), server.trust_annotations)
            for server_id, server in servers.items()
        }

    def visible(
        self,
        client: str,
        server: str,
        tool: str,
        *,
        annotations: Mapping[str, Any] | None,
        now: datetime,
        first_use: FirstUse,
    ) -> bool:
        """Return whether `client` may see `tool` of `server` in its tool list at `now`.

        A tool is visible when at least one active rule grants it and no active deny rule names it:
        deny wins whatever the arguments, so such a tool could never be called.
        """
        decisions = self.rule_decisions(
            client, server, tool, annotations=annotations, now=now, first_use=first_use
        )
        return bool(decisions) and "deny" not in decisions

    def decide(
        self,
        client: str,
        server: str,
        tool: str,
        *,
        annotations: Mapping[str, Any] | None,
        arguments: Mapping[str, Any] | None,
        now: datetime,
        first_use: FirstUse,
        input_schema: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide what happens to a call of `tool` (its name on `server`) by `client`.

        Args:
            client: The authenticated client id.
            server: The configured server id.
            tool: The tool's name on its server, not the exported name.
            annotations: The tool's `annotations` from its definition, if any.
            arguments: The call's arguments; None is treated as no arguments.
            now: The current time, with a timezone, from a clock that never goes backwards.
            first_use: This client's first-use times by rule name.
            input_schema: The tool's `inputSchema`. It is only used to check the defaults it
                declares for constrained arguments the call leaves out.

        Returns:
            The strictest result of all matching rules, or `Deny(rule=None, ...)` when none matches.
        """
        _require_timezone(now)
        matching = self._matching(client, server, tool, annotations, now, first_use)
        if not matching:
            return Deny(rule=None, reason=self._default_deny_reason(client, server, tool, annotations))

        sent = arguments or {}
        values = sent
        for rule in matching:
            # Joined once by the first rule with a path_base, relative paths reach the other rules,
            # and the server, as the absolute paths that rule checked.
            if rule.fences.joins_paths:
                values = rule.fences.with_absolute_paths(values, input_schema)
        outcomes = (
            self._evaluate(rule, client, server, tool, values, input_schema, first_use) for rule in matching
        )
        strictest = next(outcomes)
        for outcome in outcomes:
            if strictest.kind == "deny":
                break  # nothing is stricter, so later rules need not be evaluated
            # Strictly greater, so that among equally strict results the earliest rule wins.
            if SEVERITY[outcome.kind] > SEVERITY[strictest.kind]:
                strictest = outcome
        if values is sent or values == sent:
            return strictest
        return replace(strictest, arguments=values)

    def rule_decisions(
        self,
        client: str,
        server: str,
        tool: str,
        *,
        annotations: Mapping[str, Any] | None,
        now: datetime,
        first_use: FirstUse,
    ) -> frozenset[str]:
        """Return the decisions of the active rules that apply to calls of `tool` by `client` at `now`.

        A call can only be decided one of these (or denied by an argument constraint), whatever
        its arguments.
        """
        _require_timezone(now)
        return frozenset(
            rule.decision for rule in self._matching(client, server, tool, annotations, now, first_use)
        )

    def deny_rule(
        self,
        client: str,
        server: str,
        tool: str,
        *,
        annotations: Mapping[str, Any] | None,
        now: datetime,
        first_use: FirstUse,
    ) -> str | None:
        """Return the first active deny rule that names `tool` for `client` at `now`, or None."""
        _require_timezone(now)
        matching = self._matching(client, server, tool, annotations, now, first_use)
        return next((rule.name for rule in matching if rule.decision == "deny"), None)

    def rules_missing_write(
        self, client: str, server: str, tool: str, *, annotations: Mapping[str, Any] | None
    ) -> list[str]:
        """Return the rules that name `tool` itself but grant it nothing, for want of `write = true`.

        A rule without `write = true` covers only read-only tools, so naming a tool that is not
        read-only in it grants nothing. `mcp-guard check` reports these, since the tool is then
        hidden with no other sign.
        """
        return [
            rule.name
            for rule in self._rules
            if rule.tools is not None
            and self._names_call(rule, client, server, tool)
            and not self._passes_write_gate(rule, server, tool, annotations)
        ]

    def rules_granting(self, server: str, tool: str, *, annotations: Mapping[str, Any] | None) -> list[str]:
        """Return the rules that grant `tool` of `server` to some client at some time.

        These are the rules other than deny rules that name the tool and cover its kind (see
        `rules_missing_write`), whatever their clients and time windows. `mcp-guard check` compares
        their argument constraints with the arguments of the tools they grant.
        """
        return [
            rule.name
            for rule in self._rules
            if rule.decision != "deny"
            and rule.server in (WILDCARD, server)
            and (rule.tools is None or tool in rule.tools)
            and self._passes_write_gate(rule, server, tool, annotations)
        ]

    def closed_windows(self, client: str, now: datetime, first_use: FirstUse) -> list[tuple[str, datetime]]:
        """Return (rule, end) for each rule naming `client` whose `active_for_seconds` window closed by `now`.

        The window of a rule starts at the client's first call under it, so a rule the client has
        not used yet has no window to close.
        """
        _require_timezone(now)
        closed = []
        for rule in self._rules:
            started = first_use.get(rule.name)
            if rule.active_for is None or started is None or not self._names_client(rule, client):
                continue
            if now >= started + rule.active_for:
                closed.append((rule.name, started + rule.active_for))
        return closed

    def next_change(self, client: str, now: datetime, first_use: FirstUse) -> datetime | None:
        """Return the next instant after `now` at which a rule for `client` starts or ends, or None.

        A rule that ends at `not_after` is still active at that instant, so the change takes effect
        just after it. The gateway can use this to refresh a client's tool list.
        """
        _require_timezone(now)
        instants: list[datetime] = []
        for rule in self._rules:
            if not self._names_client(rule, client):
                continue
            started = first_use.get(rule.name)
            ends = None if rule.active_for is None or started is None else started + rule.active_for
            instants += [moment for moment in (rule.not_before, rule.not_after, ends) if moment is not None]
        future = [moment for moment in instants if moment > now]
        return min(future, default=None)

    def _matching(
        self,
        client: str,
        server: str,
        tool: str,
        annotations: Mapping[str, Any] | None,
        now: datetime,
        first_use: FirstUse,
    ) -> list[_Rule]:
        return [
            rule
            for rule in self._rules
            if self._names_call(rule, client, server, tool)
            and self._passes_write_gate(rule, server, tool, annotations)
            and _is_active(rule, now, first_use)
        ]

    def _names_call(self, rule: _Rule, client: str, server: str, tool: str) -> bool:
        return (
            self._names_client(rule, client)
            and rule.server in (WILDCARD, server)
            and (rule.tools is None or tool in rule.tools)
        )

    def _names_client(self, rule: _Rule, client: str) -> bool:
        if rule.everyone or client in rule.clients:
            return True
        return not rule.groups.isdisjoint(self._groups.get(client, frozenset()))

    def _passes_write_gate(
        self, rule: _Rule, server: str, tool: str, annotations: Mapping[str, Any] | None
    ) -> bool:
        # Deny rules cover every tool they name: narrowing them to read-only tools would let a
        # broader write rule grant the very tool the deny rule names.
        if rule.write or rule.decision == "deny":
            return True
        settings = self._read_only.get(server)
        if settings is None:
            return False
        if tool in settings.tools:
            return True
        # Annotations come from the server itself, so they count only if the server has trust_annotations.
        hint = None if annotations is None else annotations.get("readOnlyHint")
        return settings.trust_annotations and hint is True

    def _evaluate(
        self,
        rule: _Rule,
        client: str,
        server: str,
        tool: str,
        arguments: Mapping[str, Any],
        input_schema: Mapping[str, Any] | None,
        first_use: FirstUse,
    ) -> Decision:
        if rule.decision == "deny":
            return Deny(
                rule=rule.name,
                reason=f"Rule {rule.name!r} denies client {client!r} the tool {tool!r} of server {server!r}.",
            )
        problem = rule.fences.find_violation(arguments, input_schema) if rule.fences.by_key else None
        if problem is not None:
            return Deny(rule=rule.name, reason=f"{problem} The constraint is in rule {rule.name!r}.")

        starts = rule.name if rule.active_for is not None and rule.name not in first_use else None
        if rule.decision == "approve":
            return RequireApproval(rule=rule.name, starts_rule=starts)
        return Allow(kind=rule.decision, rule=rule.name, starts_rule=starts)

    def _default_deny_reason(
        self, client: str, server: str, tool: str, annotations: Mapping[str, Any] | None
    ) -> str:
        reason = f"No rule allows client {client!r} to call the tool {tool!r} of server {server!r}."
        for rule in self._rules:
            if not self._names_call(rule, client, server, tool):
                continue
            if not self._passes_write_gate(rule, server, tool, annotations):
                if server not in self._read_only:
                    return (
                        f"{reason} Rule {rule.name!r} grants only read-only tools, and {tool!r} is not one; "
                        "add write = true to the rule to grant it."
                    )
                return (
                    f"{reason} Rule {rule.name!r} grants only read-only tools, and {tool!r} is not listed in "
                    f"servers.{server}.read_only_tools{self._annotation_hint(server)}."
                )
            return f"{reason} Rule {rule.name!r} names it but is not active at this time."
        return reason

    def _annotation_hint(self, server: str) -> str:
        settings = self._read_only.get(server)
        if settings is not None and settings.trust_annotations:
            return " and is not annotated readOnlyHint: true"
        return ""


def _compile_rule(rule: RuleConfig, resolve_path: PathResolver) -> _Rule:
    active_for = None if rule.active_for_seconds is None else timedelta(seconds=rule.active_for_seconds)
    return _Rule(
        name=rule.name,
        decision=rule.decision,
        everyone=WILDCARD in rule.clients,
        clients=frozenset(rule.clients),
        groups=frozenset(rule.groups),
        server=rule.server,
        tools=None if WILDCARD in rule.tools else frozenset(rule.tools),
        write=rule.write,
        not_before=rule.not_before,
        not_after=rule.not_after,
        active_for=active_for,
        fences=ArgumentFences.compile(rule.arguments, resolve_path),
    )


def _is_active(rule: _Rule, now: datetime, first_use: FirstUse) -> bool:
    if rule.not_before is not None and now < rule.not_before:
        return False
    if rule.not_after is not None and now > rule.not_after:
        return False
    started = first_use.get(rule.name)
    return rule.active_for is None or started is None or now < started + rule.active_for


def _require_timezone(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError(
            f"now ({now.isoformat()}) has no timezone; pass an aware datetime such as one in UTC"
        )
