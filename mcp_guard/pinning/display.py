"""Text renderings of pins for the `mcp-guard pins` commands.

Tool names and definitions come from downstream servers, so everything taken
from them passes through `escape_text` before it reaches a terminal. No control
sequence can then move the cursor or recolour the screen, and no bidi control
or invisible character can hide or reorder what the operator approves.
"""

from __future__ import annotations

import shlex
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from mcp_guard.pinning.records import PinRecord
from mcp_guard.policy.definitions import (
    HASH_PREFIX,
    definition_diff,
    definition_findings,
    description_diff,
    is_hidden_character,
)

# Hex digits of a hash shown in `pins list`; `review` shows whole hashes.
SHORT_HASH_DIGITS = 16
# Controls, format characters, surrogates, private use, unassigned code points and the
# line and paragraph separators are escaped.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_HEURISTIC_NOTE = "the check is a heuristic, so an empty list proves nothing"


def escape_text(text: str) -> str:
    """Replace control, invisible and unprintable characters with `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`."""
    return "".join(_escape_char(char) for char in text)


def short_hash(digest: str | None) -> str:
    """Return `sha256:` and the first `SHORT_HASH_DIGITS` hex digits, or "-" for no hash."""
    if digest is None:
        return "-"
    return digest[: len(HASH_PREFIX) + SHORT_HASH_DIGITS]


def pin_table(records: Sequence[PinRecord]) -> str:
    """Render pins as aligned columns: server, tool, state, approved and pending hash, and details."""
    header = ("SERVER", "TOOL", "STATE", "APPROVED", "PENDING", "DETAILS")
    rows = [header] + [_table_row(record) for record in records]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def review_block(record: PinRecord, pins_command: str) -> str:
    """Render one pending definition: hashes, injection findings, the diff and the commands to decide.

    Args:
        record: The pin with a pending definition.
        pins_command: The `mcp-guard pins` command line for the policy file, ready to paste.
    """
    name = f"{escape_text(record.server)} / {escape_text(record.tool)}"
    kind = "new tool" if record.approved_hash is None else "changed definition"
    lines = [f"== {name}: {kind}, pending since {_time(record.pending_since)}"]
    if record.approved_hash is not None:
        approver = escape_text(record.approved_by or "?")
        lines.append(f"approved: {record.approved_hash} (by {approver}, {_time(record.approved_at)})")
    lines.append(f"pending:  {record.pending_hash}")
    lines.extend(_findings(record))
    diff = definition_diff(record.approved_definition, record.pending_definition or {})
    lines.extend(escape_text(line) for line in diff.splitlines())
    lines.extend(escape_text(line) for line in _description_diff(record).splitlines())
    command = f"{shlex.quote(escape_text(record.server))} {shlex.quote(escape_text(record.tool))}"
    lines.append(f"Approve: {pins_command} approve {command} --hash {record.pending_hash}")
    lines.append(f"Reject:  {pins_command} reject {command}")
    return "\n".join(lines)


def _table_row(record: PinRecord) -> tuple[str, ...]:
    return (
        escape_text(record.server),
        escape_text(record.tool),
        record.state,
        short_hash(record.approved_hash),
        short_hash(record.pending_hash),
        _details(record),
    )


def _details(record: PinRecord) -> str:
    if record.state == "rejected":
        return f"pending version rejected {_time(record.rejected_at)}"
    if record.state in ("changed", "new"):
        return f"waiting for review since {_time(record.pending_since)}"
    return f"approved {_time(record.approved_at)} by {escape_text(record.approved_by or '?')}"


def _findings(record: PinRecord) -> list[str]:
    findings = definition_findings(record.pending_definition or {})
    if not findings:
        return [f"No injection findings in the pending definition ({_HEURISTIC_NOTE})."]
    heading = f"Injection findings in the pending definition ({_HEURISTIC_NOTE}):"
    return [heading, *(f"  - {escape_text(finding)}" for finding in findings)]


def _description_diff(record: PinRecord) -> str:
    old = (record.approved_definition or {}).get("description")
    new = (record.pending_definition or {}).get("description")
    if not isinstance(old, str) or not isinstance(new, str):
        return ""
    return description_diff(old, new)


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _escape_char(char: str) -> str:
    if not is_hidden_character(char) and unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
