"""Frozen models of the policy file's `[limits]` section: rate limits, tool costs and the store.

A `[[limits.rules]]` entry names who it applies to (clients and groups, like a
policy rule), what it counts (per client, per organisation or globally) and on
which calls (a server and its tools), then any of the dimensions. Every
dimension is optional; an entry without one is an error. How calls are
counted is left to `mcp_guard.ratelimit`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator, model_validator

from mcp_guard.config.rules import (
    ENV_VAR_PATTERN,
    NAME_PATTERN,
    WILDCARD,
    ClientConfig,
    GroupName,
    audience_problems,
    suggestion,
)

LimitScope = Literal["client", "organisation", "global"]
PositiveInt = Annotated[StrictInt, Field(gt=0, le=10**12)]
Money = Annotated[StrictInt | StrictFloat, Field(ge=0, le=10**9)]
# Names of the dimensions a limit entry may set, in the order they are checked and reported.
DIMENSIONS = (
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "max_input_tokens",
    "max_output_tokens",
    "concurrent_calls",
    "cost_per_hour",
    "calls_per_session",
    "approvals_per_hour",
)
MAX_LIMIT_NAME_LENGTH = 128
REDIS_URL_PATTERN = r"^rediss?://[^\s/]+(/\d{1,2})?$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitRuleConfig(_Frozen):
    """One `[[limits.rules]]` entry: a set of limits on the calls of some clients."""

    name: Annotated[
        str, Field(min_length=1, max_length=MAX_LIMIT_NAME_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$")
    ]
    """Unique name, shown in every rejection the limit causes and in `mcp-guard limits`."""

    per: LimitScope = "client"
    """The scope of one count: each client alone, each organisation's clients together, or every
    client together ("global"). A client without an organisation counts alone under "organisation"."""

    clients: list[str] = []
    """Client ids the limit applies to; "*" applies it to every client. With neither `clients` nor
    `groups`, the limit applies to every client."""

    groups: list[GroupName] = []
    """Groups whose clients the limit applies to, on top of `clients`."""

    server: Annotated[str, Field(min_length=1)] = WILDCARD
    """Configured server id whose calls count, or "*" for every server."""

    tools: list[Annotated[str, Field(min_length=1)]] = [WILDCARD]
    """Tool names as the downstream server lists them, or "*" for every tool of `server`."""

    requests_per_minute: PositiveInt | None = None
    """Calls in any 60-second span."""

    requests_per_hour: PositiveInt | None = None
    """Calls in any 60-minute span."""

    requests_per_day: PositiveInt | None = None
    """Calls in any 24-hour span."""

    tokens_per_minute: PositiveInt | None = None
    """Estimated tokens of arguments plus results in any 60-second span (see docs/limits.md)."""

    max_input_tokens: PositiveInt | None = None
    """Largest estimated size of one call's arguments; a larger call is rejected before it is forwarded."""

    max_output_tokens: PositiveInt | None = None
    """Largest estimated size of one result; a larger result is cut, with a visible marker."""

    concurrent_calls: PositiveInt | None = None
    """Calls in flight at once."""

    cost_per_hour: Money | None = None
    """Cost of the calls in any 60-minute span, from `[[limits.costs]]`."""

    calls_per_session: PositiveInt | None = None
    """Calls in one MCP session (one stdio connection, or one HTTP session id)."""

    approvals_per_hour: PositiveInt | None = None
    """Calls that ask a person for approval in any 60-minute span."""

    @field_validator("clients")
    @classmethod
    def _client_names(cls, clients: list[str]) -> list[str]:
        for index, client in enumerate(clients):
            if client != WILDCARD and not re.match(NAME_PATTERN, client):
                raise ValueError(f'entry [{index}] {client!r} is neither "*" nor a client id')
        return clients

    @model_validator(mode="after")
    def _sets_a_dimension(self) -> LimitRuleConfig:
        if all(getattr(self, dimension) is None for dimension in DIMENSIONS):
            raise ValueError(
                f"limit {self.name!r} sets no limit; add at least one of: {', '.join(DIMENSIONS)}"
            )
        return self

    def dimensions(self) -> dict[str, float]:
        """Return the dimensions this entry sets, by name, in checking order."""
        values = {dimension: getattr(self, dimension) for dimension in DIMENSIONS}
        return {dimension: value for dimension, value in values.items() if value is not None}


class ToolCostConfig(_Frozen):
    """One `[[limits.costs]]` entry: what a call of some tools costs, for `cost_per_hour`."""

    server: Annotated[str, Field(min_length=1)]
    """Configured server id, or "*" for every server."""

    tools: list[Annotated[str, Field(min_length=1)]] = [WILDCARD]
    """Tool names as the downstream server lists them, or "*"."""

    per_call: Money = 0.0
    """Cost of each call, charged before it is forwarded."""

    per_second: Money = 0.0
    """Cost of each second the call takes, reserved for the server's call timeout and settled after."""

    @model_validator(mode="after")
    def _sets_a_cost(self) -> ToolCostConfig:
        if self.per_call == 0 and self.per_second == 0:
            raise ValueError(
                "this cost entry sets neither per_call nor per_second; set one, or remove the entry"
            )
        return self


class LimitsSettings(_Frozen):
    """The `[limits]` section: where counts are kept, what happens when that store fails, and the limits."""

    store: Literal["memory", "sqlite", "redis"] = "sqlite"
    """"sqlite" keeps counts in the state directory across restarts; "redis" shares them between
    gateway replicas; "memory" keeps them in the process only (tests)."""

    redis_url: Annotated[str, Field(pattern=REDIS_URL_PATTERN)] = "redis://127.0.0.1:6379/0"
    """Redis to use with `store = "redis"`, without a password (see `redis_password_from`)."""

    redis_password_from: Annotated[str, Field(pattern=ENV_VAR_PATTERN)] | None = None
    """Environment variable that contains the Redis password, if Redis requires one."""

    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "mcp-guard"
    """Prefix of every Redis key, so that several gateways can share one Redis without sharing counts."""

    on_store_failure: Literal["deny", "allow"] = "deny"
    """The fate of a call when the store cannot be reached: rejected ("deny"), or let through
    uncounted ("allow")."""

    unauthenticated_requests_per_minute: PositiveInt = 60
    """Calls per minute that all unauthenticated HTTP callers share (`allow_unauthenticated_as`)."""

    rules: list[LimitRuleConfig] = []
    """The limits, each applying to the calls it names; a call must fit every limit that applies."""

    costs: list[ToolCostConfig] = []
    """Tool costs for `cost_per_hour`; the first entry that names a call's tool applies."""

    @field_validator("redis_url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        if "@" in url:
            raise ValueError(
                "the URL contains user information; remove it and name the variable holding the password "
                "in redis_password_from"
            )
        return url

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, rules: list[LimitRuleConfig]) -> list[LimitRuleConfig]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"two limits are named {rule.name!r}; give each a unique name")
            seen.add(rule.name)
        return rules


def check_limit_references(
    limits: LimitsSettings, clients: Mapping[str, ClientConfig], server_ids: Collection[str]
) -> list[str]:
    """Return one problem line for each client, group or server a limit or cost names that is not defined."""
    problems: list[str] = []
    for index, rule in enumerate(limits.rules):
        where = f"limits.rules[{index}]"
        problems += audience_problems(where, f"limit {rule.name!r}", rule.clients, rule.groups, clients)
        problems += _server_problem(f"{where}.server", rule.server, server_ids)
    for index, cost in enumerate(limits.costs):
        problems += _server_problem(f"limits.costs[{index}].server", cost.server, server_ids)
    return problems


def _server_problem(where: str, server: str, server_ids: Collection[str]) -> Sequence[str]:
    if server == WILDCARD or server in server_ids:
        return []
    return [
        f'{where}: server {server!r} is not configured; add [servers.{server}], use "*" or fix '
        f"the name{suggestion(server, server_ids)}"
    ]
