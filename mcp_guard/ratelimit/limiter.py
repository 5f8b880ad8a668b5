"""The limiter: which limits a call falls under, what it costs, and taking it from the store.

`Limiter.plan` is pure. From the `[limits]` section and the facts of one call
it lists the charges the call needs, one per dimension of every limit that
applies. It rejects at once what can never fit: arguments over
`max_input_tokens`, or a call costing more than a whole limit. `Limiter.admit`
takes every charge from the store atomically, or rejects with the limit, the
usage and when to retry. `Limiter.finish` settles what was only known after
the call (output tokens, seconds used) and gives back the concurrent slot.

Counts are keyed on who the client is (its name from the policy file, its
organisation), never on a connection or session, except `calls_per_session`,
which is a cap per session by definition.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from mcp_guard.config.limits import LimitRuleConfig, LimitsSettings, ToolCostConfig
from mcp_guard.config.rules import WILDCARD, ClientConfig
from mcp_guard.ratelimit.store import Charge, Grant, LeaseCharge, LimitStore, Rejection, WindowCharge

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
# A session's calls are counted over this window, so a session that lasts longer than a day gets a
# fresh count for calls older than that, and the stores forget a session a day after its last call.
SESSION_PERIOD = DAY
# A concurrent slot outlives the call's timeout by this much before it expires on its own.
LEASE_MARGIN_SECONDS = 60.0
# The limit name under which unauthenticated HTTP callers share one bucket.
UNAUTHENTICATED_LIMIT = "unauthenticated"

_PERIODS = {
    "requests_per_minute": MINUTE,
    "requests_per_hour": HOUR,
    "requests_per_day": DAY,
    "tokens_per_minute": MINUTE,
    "cost_per_hour": HOUR,
    "calls_per_session": SESSION_PERIOD,
    "approvals_per_hour": HOUR,
}
# The dimensions that count requests. The input round that carries a person's decision is the
# same request as its first round.
REQUEST_COUNTS = frozenset(
    {"requests_per_minute", "requests_per_hour", "requests_per_day", "calls_per_session"}
)
_WHAT = {
    "requests_per_minute": "calls per minute",
    "requests_per_hour": "calls per hour",
    "requests_per_day": "calls per day",
    "tokens_per_minute": "tokens per minute",
    "cost_per_hour": "cost per hour",
    "calls_per_session": "calls in this session",
    "approvals_per_hour": "approval requests per hour",
    "concurrent_calls": "calls in flight",
    "max_input_tokens": "tokens of arguments per call",
}


@dataclass(frozen=True)
class CallFacts:
    """The facts about one call that the limiter uses."""

    client: str
    server: str
    tool: str
    input_tokens: int
    timeout_seconds: float
    organisation: str | None = None
    session: str | None = None
    anonymous: bool = False
    """The caller did not authenticate and was mapped to `allow_unauthenticated_as`."""
    needs_approval: bool = False
    """The policy decided that a person must approve the call."""
    answers_question: bool = False
    """The call repeats one that needs approval, carrying the person's answer to its question
    (a 2026-07-28 input round). Its first round already took a request from each request count."""


@dataclass(frozen=True)
class Meter:
    """One dimension of one limit, as it applies to a call."""

    limit: str
    dimension: str
    per: str
    charge: Charge


@dataclass(frozen=True)
class LimitExceeded:
    """The reason a call was rejected, worded for the client without revealing other clients' usage."""

    limit: str
    dimension: str
    message: str
    retry_after: float | None


@dataclass
class Plan:
    """The charges one call needs, and how to settle them after it."""

    facts: CallFacts
    meters: list[Meter]
    output_cap: tuple[int, str] | None = None
    """The smallest `max_output_tokens` that applies, and the limit that sets it."""
    cost: ToolCostConfig | None = None
    reserved_tokens: int = 0
    """Output tokens reserved in each token window before the call."""
    reserved_cost: float = 0.0
    """Cost reserved in each cost window before the call."""


@dataclass
class Admission:
    """A call that was let through, with what it took."""

    plan: Plan
    grant: Grant
    settled: bool = field(default=False)


class Limiter:
    """Applies the `[limits]` section of a policy file to calls, with counts kept in `store`."""

    def __init__(
        self, settings: LimitsSettings, clients: Mapping[str, ClientConfig], store: LimitStore
    ) -> None:
        self.settings = settings
        self.store = store
        self._groups = {name: frozenset(client.groups) for name, client in clients.items()}

    def rules_for(
        self, client: str, groups: Collection[str], server: str | None = None, tool: str | None = None
    ) -> list[LimitRuleConfig]:
        """Return the limits that apply to `client` (on `server`'s `tool`, when given)."""
        return [
            rule
            for rule in self.settings.rules
            if names_client(rule, client, groups)
            and (server is None or rule.server in (WILDCARD, server))
            and (tool is None or WILDCARD in rule.tools or tool in rule.tools)
        ]

    def plan(self, facts: CallFacts) -> Plan | LimitExceeded:
        """List the charges `facts` needs, or reject a call that can never fit."""
        rules = self.rules_for(facts.client, self._groups.get(facts.client, ()), facts.server, facts.tool)
        cost = self._cost_of(facts.server, facts.tool)
        plan = Plan(facts=facts, meters=[], cost=cost)
        caps = [(rule.max_output_tokens, rule.name) for rule in rules if rule.max_output_tokens is not None]
        plan.output_cap = min(caps) if caps else None
        plan.reserved_tokens = plan.output_cap[0] if plan.output_cap else 0
        if cost is not None:
            plan.reserved_cost = cost.per_call + cost.per_second * facts.timeout_seconds
        if facts.anonymous:
            charge = WindowCharge(
                key=f"{UNAUTHENTICATED_LIMIT}:requests_per_minute",
                limit=self.settings.unauthenticated_requests_per_minute,
                period=MINUTE,
                units=1,
            )
            plan.meters.append(Meter(UNAUTHENTICATED_LIMIT, "requests_per_minute", "global", charge))
        for rule in rules:
            for dimension, value in rule.dimensions().items():
                rejection = self._add_meter(plan, rule, dimension, value)
                if rejection is not None:
                    return rejection
        return plan

    def approval_plan(self, facts: CallFacts) -> Plan:
        """List the `approvals_per_hour` charges of a call about to ask a person for approval.

        They are taken only when someone is really asked: a call that finds an existing grant,
        or that joins an identical request already waiting, asks nobody.
        """
        rules = self.rules_for(facts.client, self._groups.get(facts.client, ()), facts.server, facts.tool)
        plan = Plan(facts=facts, meters=[])
        for rule in rules:
            if rule.approvals_per_hour is not None:
                key = self._key(rule, "approvals_per_hour", facts)
                charge = WindowCharge(key=key, limit=rule.approvals_per_hour, period=HOUR, units=1)
                plan.meters.append(Meter(rule.name, "approvals_per_hour", rule.per, charge))
        return plan

    def standing_meters(self, client: str, organisation: str | None) -> list[Meter]:
        """Return the counted dimensions of every limit that applies to `client`, for `mcp-guard limits`.

        Per-call caps (`max_input_tokens`, `max_output_tokens`) count nothing, and
        `calls_per_session` counts per session, so neither is listed.
        """
        facts = CallFacts(
            client=client, organisation=organisation, server="", tool="", input_tokens=0, timeout_seconds=0
        )
        meters = []
        for rule in self.rules_for(client, self._groups.get(client, ())):
            for dimension, value in rule.dimensions().items():
                key = self._key(rule, dimension, facts)
                charge: Charge
                if dimension == "concurrent_calls":
                    charge = LeaseCharge(key=key, limit=int(value), lease_seconds=0)
                elif dimension in _PERIODS and dimension != "calls_per_session":
                    charge = WindowCharge(key=key, limit=value, period=_PERIODS[dimension], units=0)
                else:
                    continue
                meters.append(Meter(rule.name, dimension, rule.per, charge))
        return meters

    async def admit(self, plan: Plan, now: float) -> Admission | LimitExceeded:
        """Take every charge of `plan` from the store, or reject the call."""
        outcome = await self.store.acquire([meter.charge for meter in plan.meters], now)
        if isinstance(outcome, Rejection):
            return _exceeded(plan.meters[outcome.index], outcome)
        return Admission(plan=plan, grant=outcome)

    async def finish(self, admission: Admission, output_tokens: int, seconds: float, now: float) -> None:
        """Settle the tokens and cost that were reserved against what the call used, and free its slot."""
        if admission.settled:
            return
        admission.settled = True
        plan = admission.plan
        corrections: dict[int, float] = {}
        for index, meter in enumerate(plan.meters):
            if not isinstance(meter.charge, WindowCharge):
                continue
            if meter.dimension == "tokens_per_minute":
                used = float(plan.facts.input_tokens + output_tokens)
                corrections[index] = used - meter.charge.units
            elif meter.dimension == "cost_per_hour" and plan.cost is not None:
                used = plan.cost.per_call + plan.cost.per_second * seconds
                corrections[index] = used - meter.charge.units
        if corrections or any(isinstance(meter.charge, LeaseCharge) for meter in plan.meters):
            await self.store.finish(admission.grant, corrections, now)

    def _add_meter(
        self, plan: Plan, rule: LimitRuleConfig, dimension: str, value: float
    ) -> LimitExceeded | None:
        facts = plan.facts
        if dimension == "max_output_tokens":
            return None
        if dimension == "max_input_tokens":
            if facts.input_tokens > value:
                return LimitExceeded(
                    rule.name,
                    dimension,
                    f"Rejected by mcp-guard: the arguments are about {facts.input_tokens} tokens, over the "
                    f"{int(value)} tokens per call that limit {rule.name!r} allows; send less.",
                    None,
                )
            return None
        key = self._key(rule, dimension, facts)
        if dimension == "concurrent_calls":
            charge: Charge = LeaseCharge(
                key=key, limit=int(value), lease_seconds=facts.timeout_seconds + LEASE_MARGIN_SECONDS
            )
            plan.meters.append(Meter(rule.name, dimension, rule.per, charge))
            return None
        units: float = 1.0
        if facts.answers_question and dimension in REQUEST_COUNTS:
            return None
        if dimension == "calls_per_session":
            if facts.session is None:
                return None  # a 2026-07-28 HTTP request belongs to no session
            key += ":" + hashlib.sha256(facts.session.encode()).hexdigest()[:24]
        elif dimension == "approvals_per_hour":
            return None  # charged by `approval_plan`, only when a person is about to be asked
        elif dimension == "tokens_per_minute":
            if facts.input_tokens > value:
                return _never_fits(rule, dimension, facts.input_tokens, value, "tokens")
            units = min(float(facts.input_tokens + plan.reserved_tokens), value)
        elif dimension == "cost_per_hour":
            if plan.cost is None:
                return None
            if plan.cost.per_call > value:
                return _never_fits(rule, dimension, plan.cost.per_call, value, "cost")
            units = min(plan.reserved_cost, value)
            if units <= 0:
                return None
        charge = WindowCharge(key=key, limit=value, period=_PERIODS[dimension], units=units)
        plan.meters.append(Meter(rule.name, dimension, rule.per, charge))
        return None

    def _key(self, rule: LimitRuleConfig, dimension: str, facts: CallFacts) -> str:
        """Return the store key of `rule`'s `dimension` for the caller: its client, organisation or "*"."""
        if rule.per == "global":
            subject = "*"
        elif rule.per == "organisation" and facts.organisation is not None:
            subject = f"org={facts.organisation}"
        else:
            subject = f"client={facts.client}"
        return _store_key(rule.name, dimension, subject)

    def _cost_of(self, server: str, tool: str) -> ToolCostConfig | None:
        for cost in self.settings.costs:
            if cost.server in (WILDCARD, server) and (WILDCARD in cost.tools or tool in cost.tools):
                return cost
        return None


# Every call of a client builds the same few keys, so they are remembered (a bounded number of them).
@functools.lru_cache(maxsize=4096)
def _store_key(rule_name: str, dimension: str, subject: str) -> str:
    # Quoted, so that no name can contain the separator and collide with another limit's key.
    return f"{quote(rule_name, safe='')}:{dimension}:{quote(subject, safe='=*')}"


def names_client(rule: LimitRuleConfig, client: str, groups: Collection[str]) -> bool:
    """Return whether the limit entry `rule` covers `client`, a member of `groups`."""
    if not rule.clients and not rule.groups:
        return True
    return WILDCARD in rule.clients or client in rule.clients or any(group in rule.groups for group in groups)


def _never_fits(
    rule: LimitRuleConfig, dimension: str, needed: float, limit: float, unit: str
) -> LimitExceeded:
    fix = (
        "send a smaller call" if unit == "tokens" else "ask the operator to raise the limit or lower the cost"
    )
    return LimitExceeded(
        rule.name,
        dimension,
        f"Rejected by mcp-guard: this call alone needs {_number(needed)} {unit}, more than the whole limit "
        f"{rule.name!r} allows ({_number(limit)} {_WHAT[dimension]}), so it can never run; {fix}.",
        None,
    )


def _exceeded(meter: Meter, rejection: Rejection) -> LimitExceeded:
    """Word a rejection; usage is shown only where it is the caller's own."""
    charge = meter.charge
    what = _WHAT.get(meter.dimension, meter.dimension)
    whose = {"client": "your", "organisation": "your organisation's", "global": "the gateway's"}[meter.per]
    if meter.dimension == "calls_per_session":
        whose = "this session's"
    usage = f"{whose} limit is {_number(charge.limit)} {what}"
    if meter.per == "client" or meter.dimension == "calls_per_session":
        usage += f", {_number(rejection.used)} used"
    if isinstance(charge, WindowCharge) and charge.units != 1:
        usage += f", this call needs {_number(charge.units)}"
    retry: float | None = None
    if isinstance(charge, LeaseCharge):
        when = "retry when one of the calls in flight has finished"
    elif meter.dimension == "calls_per_session":
        when = "this session may make no more calls"
    else:
        retry = math.ceil(rejection.retry_after)
        when = f"retry in {_duration(retry)}"
    message = f"Rate limited by mcp-guard: this call would exceed limit {meter.limit!r} ({usage}); {when}."
    return LimitExceeded(meter.limit, meter.dimension, message, retry)


def _duration(seconds: int) -> str:
    """Return a wait as a person reads it: seconds up to two minutes, then minutes, then hours."""
    if seconds < 120:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
