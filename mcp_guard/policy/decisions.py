"""The outcome of a policy decision: `Allow`, `RequireApproval` or `Deny`.

A `Decision` is a union of frozen dataclasses distinguished by their `kind` field,
so callers branch with `match decision.kind` or `isinstance` and a type checker
can verify that every case is handled. What the gateway does with each kind (forward, notify, ask a
person, reject) is left to the call pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Severity of each kind; when several rules match a call, the highest severity wins.
SEVERITY: dict[str, int] = {"auto": 0, "notify": 1, "approve": 2, "deny": 3}


@dataclass(frozen=True, kw_only=True)
class Allow:
    """The call may be forwarded: at once ("auto") or with a notification ("notify").

    Attributes:
        kind: "auto" or "notify".
        rule: Name of the rule that decided.
        starts_rule: Name of a rule with `active_for_seconds` that this call starts, or None. The
            caller records the time of the call as that rule's first use for this client.
        arguments: The arguments to forward in place of those sent, when a rule's `path_base`
            turned relative paths into the absolute paths it checked; None when unchanged.
    """

    kind: Literal["auto", "notify"]
    rule: str
    starts_rule: str | None = None
    arguments: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RequireApproval:
    """The call may be forwarded only after a person approves it.

    Attributes:
        kind: Always "approve".
        rule: Name of the rule that decided.
        starts_rule: As for `Allow`; the caller records the first use when it forwards the call.
        arguments: As for `Allow`. The person approves these arguments.
    """

    kind: Literal["approve"] = "approve"
    rule: str
    starts_rule: str | None = None
    arguments: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Deny:
    """The call must not be forwarded.

    Attributes:
        kind: Always "deny".
        rule: Name of the rule that denied, or None when no rule grants the tool (default deny).
        reason: A sentence for the client and the audit trail: which argument broke which constraint,
            or why no rule applies.
        arguments: As for `Allow`: the arguments with relative paths joined, which the audit trail
            records, or None when unchanged.
    """

    kind: Literal["deny"] = "deny"
    rule: str | None
    reason: str
    arguments: Mapping[str, Any] | None = None


Decision = Allow | RequireApproval | Deny
"""The result of `PolicyEngine.decide`, keyed by `kind`."""
