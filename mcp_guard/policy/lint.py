"""Warnings about policy mistakes that leave a file valid but weaker than it reads.

`mcp-guard check` calls these once it has every tool's definition. A tool name
that no server lists, or an argument name that no granted tool takes, matches
nothing, so a deny rule with a typo denies nothing and a fence with a typo
fences nothing. Each function returns sentences and prints nothing. Starting
servers and reading the gateway's state is left to the caller.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from mcp_guard.config import GatewayConfig
from mcp_guard.config.rules import WILDCARD, RuleConfig, argument_key, suggestion
from mcp_guard.downstream.naming import SEPARATOR
from mcp_guard.policy.engine import FirstUse, PolicyEngine

ToolListings = Mapping[str, Sequence[Mapping[str, Any]]]
"""The tool definitions of each server whose listing is known, by server id."""

# Schema keywords whose value is one subschema, a list of subschemas, or a map of names to subschemas.
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LIST_KEYS = ("prefixItems", "allOf", "anyOf", "oneOf", "items")
_SUBSCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Bounds the walk of a schema. One level of arguments takes one or two schema levels (`properties`,
# then an array's `items`), and the gateway rejects arguments nested more than 64 levels deep.
MAX_SCHEMA_DEPTH = 128
# Argument names (after `argument_key`) that usually contain file or folder paths.
PATH_LIKE_NAMES = frozenset(
    {"source", "destination", "file", "files", "filename", "dir", "directory", "folder", "cwd", "root"}
)
# How many tool names a warning lists before it gives the count of the rest.
LISTED_NAMES = 5


def policy_warnings(config: GatewayConfig, listings: ToolListings, engine: PolicyEngine) -> list[str]:
    """Return a warning for each entry that matches no tool or argument, and each path a fence misses.

    Args:
        config: The policy file.
        listings: Each server's tool definitions. A server missing here (one that did not start)
            is not checked, and neither is a rule with `server = "*"` while any server is missing.
        engine: The policy built from `config`, which decides the tools each rule grants.
    """
    return [
        *_tool_name_warnings(config, listings),
        *_read_only_warnings(config, listings),
        *_argument_warnings(config, listings, engine),
    ]


def read_only_hint(config: GatewayConfig, server: str, tool: str) -> str:
    """Return the sentence that offers `read_only_tools` as the fix for a tool hidden for want of `write`.

    It is empty unless the server lists some `read_only_tools`, because only then can a missing or
    mistyped entry there, rather than the rule, be the cause.
    """
    settings = config.servers.get(server)
    if settings is None or not settings.read_only_tools:
        return ""
    hint = f" If it only reads, add {tool!r} to servers.{server}.read_only_tools instead."
    close = difflib.get_close_matches(tool, settings.read_only_tools, n=1)
    if close and close[0] != tool:
        hint += f" That list has {close[0]!r}, which may be a typo of it."
    return hint


def window_notes(
    config: GatewayConfig, engine: PolicyEngine, now: datetime, first_uses: Mapping[str, FirstUse]
) -> list[str]:
    """Return a line for each rule outside its time window at `now`.

    Args:
        config: The policy file.
        engine: The policy built from `config`.
        now: The gateway's time: the later of the system time and its stored high-water mark.
        first_uses: Each client's first call under each `active_for_seconds` rule, by client id.
    """
    notes = []
    for rule in config.rules:
        if rule.not_after is not None and now > rule.not_after:
            notes.append(f"rule {rule.name!r} ended at {_instant(rule.not_after)} (not_after)")
        elif rule.not_before is not None and now < rule.not_before:
            notes.append(f"rule {rule.name!r} starts at {_instant(rule.not_before)} (not_before)")
    for client in config.clients:
        used = first_uses.get(client, {})
        for name, end in engine.closed_windows(client, now, used):
            notes.append(
                f"rule {name!r}: the window of client {client!r} closed at {_instant(end)} "
                f"(active_for_seconds from its first call at {_instant(used[name])})"
            )
    return notes


def schema_properties(schema: Any, depth: int = 0) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (name, subschema) for every property at any depth of a JSON Schema.

    Properties of objects inside arrays, nested objects, combinators and `$defs` count, because a
    constraint applies to a key of that name wherever it occurs in the arguments.
    """
    if not isinstance(schema, Mapping) or depth > MAX_SCHEMA_DEPTH:
        return
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for name, subschema in properties.items():
            if isinstance(name, str):
                yield name, subschema if isinstance(subschema, Mapping) else {}
    for key in _SUBSCHEMA_KEYS:
        yield from schema_properties(schema.get(key), depth + 1)
    for key in _SUBSCHEMA_LIST_KEYS:
        value = schema.get(key)
        if isinstance(value, list):
            for subschema in value:
                yield from schema_properties(subschema, depth + 1)
    for key in _SUBSCHEMA_MAP_KEYS:
        value = schema.get(key)
        if isinstance(value, Mapping):
            for subschema in value.values():
                yield from schema_properties(subschema, depth + 1)


def _tool_name_warnings(config: GatewayConfig, listings: ToolListings) -> Iterator[str]:
    for rule in config.rules:
        servers = _servers_of(rule.server, config, listings)
        if servers is None:
            continue
        listed = {_name(tool) for server in servers for tool in listings[server]}
        prefixes = [config.prefix_of(server) for server in servers if server in config.servers]
        where = "no server lists" if rule.server == WILDCARD else f"server {rule.server!r} does not list"
        for entry in rule.tools:
            if entry == WILDCARD or entry in listed:
                continue
            yield (
                f"rule {rule.name!r} names tool {entry!r}, which {where}, so that entry matches no tool"
                f"{_name_hint(entry, listed, prefixes)}"
            )


def _read_only_warnings(config: GatewayConfig, listings: ToolListings) -> Iterator[str]:
    for server, settings in config.servers.items():
        if server not in listings:
            continue
        listed = {_name(tool) for tool in listings[server]}
        for entry in settings.read_only_tools:
            if entry in listed:
                continue
            hint = _name_hint(entry, listed, [config.prefix_of(server)], wildcard=False)
            yield (
                f"servers.{server}.read_only_tools names {entry!r}, which server {server!r} does not list, "
                f"so that entry makes no tool read-only{hint}"
            )


def _argument_warnings(config: GatewayConfig, listings: ToolListings, engine: PolicyEngine) -> Iterator[str]:
    for rule in config.rules:
        servers = _servers_of(rule.server, config, listings)
        if not rule.arguments or servers is None:
            continue
        granted = [
            tool
            for server in servers
            for tool in listings[server]
            if rule.name in engine.rules_granting(server, _name(tool), annotations=_annotations(tool))
        ]
        if not granted:
            continue  # the tool-name warnings or check's `hidden:` lines already cover such a rule
        yield from _unknown_arguments(rule, granted)
        yield from _unfenced_paths(rule, granted)


def _unknown_arguments(rule: RuleConfig, granted: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    properties = {name for tool in granted for name, _ in schema_properties(tool.get("inputSchema"))}
    keys = {argument_key(name) for name in properties}
    tools = _listed([_name(tool) for tool in granted])
    for name in rule.arguments:
        if argument_key(name) in keys:
            continue
        yield (
            f"rule {rule.name!r} constrains argument {name!r}, which no tool it grants takes ({tools}), "
            f"so the constraint never applies{_did_you_mean(name, properties)}"
        )


def _unfenced_paths(rule: RuleConfig, granted: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """Warn about path-like string arguments left out of a rule that fences other paths."""
    fenced = [name for name, constraints in rule.arguments.items() if constraints.path_under]
    fenced_keys = {argument_key(name) for name in fenced}
    argument_keys = {
        argument_key(name) for tool in granted for name, _ in schema_properties(tool.get("inputSchema"))
    }
    if fenced_keys.isdisjoint(argument_keys):
        return  # no fence applies at all, which `_unknown_arguments` reports
    for tool in granted:
        unfenced = {
            name
            for name, subschema in schema_properties(tool.get("inputSchema"))
            if argument_key(name) not in fenced_keys
            and _is_path_like(argument_key(name))
            and _holds_strings(subschema)
        }
        for name in sorted(unfenced):
            yield (
                f"rule {rule.name!r} fences {_listed([repr(fence) for fence in fenced])} with path_under, but "
                f"tool {_name(tool)!r} also takes {name!r}, which no path_under in the rule covers"
            )


def _servers_of(rule_server: str, config: GatewayConfig, listings: ToolListings) -> list[str] | None:
    """Return the servers a rule names, or None when the listing of one of them is unknown."""
    if rule_server != WILDCARD:
        return [rule_server] if rule_server in listings else None
    if any(server not in listings for server in config.servers):
        return None
    return list(listings)


def _name_hint(entry: str, listed: Collection[str], prefixes: Sequence[str], *, wildcard: bool = True) -> str:
    """Return a hint naming what the entry looks like (an exported name, a pattern) and the closest listed name.

    `wildcard` is whether the list the entry is in accepts "*" for every tool.
    """
    for prefix in prefixes:
        stripped = entry.removeprefix(f"{prefix}{SEPARATOR}")
        if stripped != entry:
            return (
                f". It looks like an exported name, but rules and read_only_tools take the name the "
                f"server lists{_did_you_mean(stripped, listed)}"
            )
    if any(character in entry for character in "*?["):
        matches = _listed(sorted(fnmatch.filter(listed, entry))) or "none"
        every = ', or use "*"' if wildcard else ""
        return f". Names are exact, not patterns: list each tool{every} (tools matching it now: {matches})"
    return _did_you_mean(entry, listed)


def _did_you_mean(name: str, known: Collection[str]) -> str:
    # `suggestion` lists every known name when none is close, which is too many for a server's tools.
    return suggestion(name, difflib.get_close_matches(name, list(known), n=1))


def _is_path_like(key: str) -> bool:
    return key.endswith(("path", "paths")) or key in PATH_LIKE_NAMES


def _holds_strings(subschema: Mapping[str, Any]) -> bool:
    """Return whether a property's schema admits strings, or arrays of strings."""
    types = subschema.get("type")
    kinds: set[Any] = set()
    if isinstance(types, str):
        kinds.add(types)
    elif isinstance(types, list):
        kinds.update(types)
    if "string" in kinds:
        return True
    items = subschema.get("items")
    return "array" in kinds and isinstance(items, Mapping) and _holds_strings(items)


def _listed(names: Sequence[str]) -> str:
    first_names = ", ".join(names[:LISTED_NAMES])
    rest = len(names) - LISTED_NAMES
    return f"{first_names} and {rest} more" if rest > 0 else first_names


def _name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("name"))


def _annotations(tool: Mapping[str, Any]) -> Mapping[str, Any] | None:
    annotations = tool.get("annotations")
    return annotations if isinstance(annotations, Mapping) else None


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
