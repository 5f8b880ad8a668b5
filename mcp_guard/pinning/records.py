"""The pin store's records and results, and the rule that decides each pin's next state.

A pin is the approved definition of one downstream tool, keyed by (server id,
tool name as the server reported it), plus at most one pending definition
waiting for review. `plan_change` is the whole trust-on-first-use rule as a
pure function, so the store only reads rows, applies the plan and writes.

A tool is approved only while the hash of its current definition equals the
approved hash. A definition that differs is held as pending, and a server
that returns to the approved definition is approved again at once, with its
pending entry dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mcp_guard.policy.definitions import definition_findings, definition_hash

PinStatus = Literal["approved", "changed", "new"]
"""The relation of a tool's current definition to its pin.

"approved": the hash equals the approved hash, so the tool is exported.
"changed": an approved version exists and the current definition differs from it.
"new": no version of the tool was ever approved.
Only "approved" tools are exported and callable.
"""

PinState = Literal["approved", "changed", "new", "rejected"]
"""State of a stored pin as `mcp-guard pins list` shows it: the status, with rejections kept apart."""

PinAction = Literal["none", "approve", "hold", "drop_pending"]
"""The write for one observed tool: nothing, an approval, a pending entry, or a revert."""

APPROVED_ON_FIRST_USE = "trust-on-first-use"
"""`approved_by` of definitions approved because their server was seen for the first time."""
APPROVED_BY_POLICY = "allow_new_tools"
"""`approved_by` of new tools approved because their server's policy sets `allow_new_tools`."""


@dataclass(frozen=True, slots=True)
class PinRecord:
    """One stored pin: the approved definition of a tool and the pending one, if any.

    Definitions contain only the pinned fields (see `policy.definitions.pinned_fields`).
    Times are timezone-aware UTC.
    """

    server: str
    tool: str
    first_seen: datetime
    approved_hash: str | None = None
    approved_definition: dict[str, Any] | None = None
    approved_at: datetime | None = None
    approved_by: str | None = None
    """The approver: an operator name, `APPROVED_ON_FIRST_USE` or `APPROVED_BY_POLICY`."""
    pending_hash: str | None = None
    pending_definition: dict[str, Any] | None = None
    pending_since: datetime | None = None
    rejected_at: datetime | None = None
    """Time an operator rejected the pending definition. The tool then stays withheld without a new review."""

    @property
    def state(self) -> PinState:
        """The pin's state as `pins list` shows it."""
        if self.pending_hash is None:
            return "approved"
        if self.rejected_at is not None:
            return "rejected"
        return "new" if self.approved_hash is None else "changed"


@dataclass(frozen=True, slots=True)
class PinChange:
    """The plan for one observed tool: the status it ends in and what to write."""

    status: PinStatus
    action: PinAction
    approved_by: str | None = None
    """Set when `action` is "approve"."""


@dataclass(frozen=True, slots=True)
class PlannedPin:
    """One tool of an observed listing: its hash, its injection findings and the plan for its pin."""

    name: str
    tool: Mapping[str, Any]
    digest: str
    change: PinChange
    findings: tuple[str, ...]
    previous: PinRecord | None
    """The pin as stored before this observation."""


@dataclass(frozen=True, slots=True)
class PinReport:
    """The result of observing one server's tool listing."""

    server: str
    statuses: Mapping[str, PinStatus]
    """Status of every tool in the listing, by its name on the server."""
    first_sight: bool
    """Whether the server had never been observed before, so its tools were trusted on first use."""
    newly_pending: tuple[str, ...] = ()
    """Tools whose definition this observation put up for review (not those already pending)."""
    findings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Injection findings by tool, for tools that have any (see `definitions.definition_findings`)."""

    @property
    def approved(self) -> tuple[str, ...]:
        """Tools that may be exported and called."""
        return self._with("approved")

    @property
    def changed(self) -> tuple[str, ...]:
        """Tools withheld because their definition differs from the approved one."""
        return self._with("changed")

    @property
    def new(self) -> tuple[str, ...]:
        """Tools withheld because no version of them was ever approved."""
        return self._with("new")

    @property
    def withheld(self) -> tuple[str, ...]:
        """Tools that must not be exported or called: changed and new ones."""
        return tuple(name for name, status in self.statuses.items() if status != "approved")

    @classmethod
    def from_plans(cls, server: str, first_sight: bool, plans: Sequence[PlannedPin]) -> PinReport:
        """Summarise the plans of one listing."""
        return cls(
            server=server,
            statuses={plan.name: plan.change.status for plan in plans},
            first_sight=first_sight,
            newly_pending=tuple(plan.name for plan in plans if plan.change.action == "hold"),
            findings={plan.name: plan.findings for plan in plans if plan.findings},
        )

    def _with(self, status: PinStatus) -> tuple[str, ...]:
        return tuple(name for name, value in self.statuses.items() if value == status)


def plan_listing(
    listing: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, PinRecord],
    *,
    first_sight: bool,
    allow_new_tools: bool,
    hold_flagged: bool,
) -> list[PlannedPin]:
    """Plan the pin of every tool in a listing (see `plan_change`).

    Args:
        listing: Tool definitions by name, as the server sent them.
        records: The server's stored pins by tool name.
        first_sight: The server was never observed before.
        allow_new_tools: The server's policy exposes tools it adds later without review.
        hold_flagged: Never approve a definition with injection findings automatically.
    """
    plans: list[PlannedPin] = []
    for name, tool in listing.items():
        digest = definition_hash(tool)
        findings = tuple(definition_findings(tool))
        previous = records.get(name)
        change = plan_change(
            previous,
            digest,
            first_sight=first_sight,
            allow_new_tools=allow_new_tools,
            flagged=hold_flagged and bool(findings),
        )
        plans.append(PlannedPin(name, tool, digest, change, findings, previous))
    return plans


def plan_change(
    record: PinRecord | None,
    digest: str,
    *,
    first_sight: bool,
    allow_new_tools: bool,
    flagged: bool = False,
) -> PinChange:
    """Decide the status of an observed definition and what the store must write.

    Args:
        record: The stored pin of the tool, or None if the tool was never seen.
        digest: The hash of the definition just observed.
        first_sight: The server was never observed before (trust on first use).
        allow_new_tools: The server's policy exposes tools it adds later without review.
        flagged: Hold the definition for review even where it would be approved
            automatically (the caller sets it for definitions with injection findings).
    """
    if record is None or record.approved_hash is None:
        return _plan_unapproved(
            record, digest, first_sight=first_sight, allow=allow_new_tools, flagged=flagged
        )
    if record.approved_hash == digest:
        action: PinAction = "none" if record.pending_hash is None else "drop_pending"
        return PinChange("approved", action)
    # A definition already pending, or already rejected, is not put up for review again.
    return PinChange("changed", "none" if record.pending_hash == digest else "hold")


def _plan_unapproved(
    record: PinRecord | None, digest: str, *, first_sight: bool, allow: bool, flagged: bool
) -> PinChange:
    if (first_sight or allow) and not flagged:
        return PinChange("approved", "approve", APPROVED_ON_FIRST_USE if first_sight else APPROVED_BY_POLICY)
    if record is not None and record.pending_hash == digest:
        return PinChange("new", "none")
    return PinChange("new", "hold")
