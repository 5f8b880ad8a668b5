"""Text and JSON Lines renderings of audit records for the `mcp-guard audit` commands.

Everything printed passes through `escape_text`, so a tool name, argument or
result cannot move the cursor, recolour the terminal or reorder text with bidi
controls. List views also cut long values; `show --full` prints them whole.
"""

from __future__ import annotations

import json
import unicodedata

from pydantic import JsonValue

from mcp_guard.audit.records import CallIntent, CallOutcome
from mcp_guard.audit.store import CallRecord, StoredRow

# Characters of one value in a list line, of the arguments and the outcome's detail there (a
# sentence, such as why a call was denied or how a run ended), and of one string inside `show`.
LIST_VALUE_MAX_CHARS = 60
LIST_ARGUMENTS_MAX_CHARS = 120
LIST_DETAIL_MAX_CHARS = 120
SHOW_VALUE_MAX_CHARS = 2000
# A preview that contains this many first characters of the detail repeats it, and is left out.
DETAIL_PROBE_CHARS = 40
# Unicode categories escaped on output: controls, format characters (bidi overrides,
# zero-width) and the line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# Line breaks and tabs, escaped as a reader expects to see them.
_FAMILIAR_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text: str) -> str:
    """Replace control and format characters with `\\n`, `\\r`, `\\t`, `\\xNN` or `\\uNNNN` escapes."""
    if text.isprintable():
        return text
    return "".join(_escape_char(char) for char in text)


def shorten(text: str, max_chars: int) -> str:
    """Cut text to `max_chars`, ending with an ellipsis when cut."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def call_line(call: CallRecord) -> str:
    """Render one call as a single line for `search`."""
    intent, outcome = call.intent, call.outcome
    fields = [
        intent.time,
        intent.call_id,
        intent.client,
        f"{intent.server}/{intent.tool}",
        intent.decision,
        outcome.outcome if outcome is not None else "running",
        f"{outcome.latency_ms:.1f}ms" if outcome is not None else "-",
    ]
    cells = [_cell(field) for field in fields]
    if intent.arguments:
        cells.append(_cell(_arguments_text(intent.arguments), LIST_ARGUMENTS_MAX_CHARS))
    if outcome is not None and outcome.detail:
        cells.append(_cell(f"[{outcome.detail}]", LIST_DETAIL_MAX_CHARS))
    if outcome is not None and outcome.preview and not _repeats(outcome):
        cells.append(_cell(outcome.preview))
    return "  ".join(cells)


def _arguments_text(arguments: JsonValue) -> str:
    """Return the arguments as compact JSON, short values first, so a path is not cut off by a file's content."""
    if isinstance(arguments, dict):
        arguments = dict(
            sorted(arguments.items(), key=lambda item: len(json.dumps(item[1], ensure_ascii=False)))
        )
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _repeats(outcome: CallOutcome) -> bool:
    """Return whether a result's preview repeats the detail, as the error of a refused call does.

    A rate-limited call's error names the limit that stopped it, as its detail does, in more words.
    """
    if not outcome.detail:
        return False
    return outcome.outcome == "rate_limited" or outcome.detail[:DETAIL_PROBE_CHARS] in outcome.preview


def row_line(row: StoredRow) -> str:
    """Render one row as a single line for `search --follow`."""
    record = row.record
    if isinstance(record, CallIntent):
        fields = [record.time, "intent", record.call_id, record.client, f"{record.server}/{record.tool}"]
        fields.append(record.decision)
    else:
        fields = [record.time, "outcome", record.call_id, record.outcome, f"{record.latency_ms:.1f}ms"]
        if record.preview:
            fields.append(record.preview)
    return "  ".join(_cell(field) for field in fields)


def call_details(call: CallRecord, *, full: bool = False) -> str:
    """Render every field of a call for `show`, arguments as indented JSON."""
    max_chars = None if full else SHOW_VALUE_MAX_CHARS
    intent = call.intent.model_dump(exclude={"arguments"})
    lines = [f"intent (row {call.intent_row_id})"]
    lines += [f"  {name}: {_value(value, max_chars)}" for name, value in intent.items()]
    arguments = json.dumps(_shorten_strings(call.intent.arguments, max_chars), indent=2, ensure_ascii=False)
    # JSON escapes newlines inside strings, so each "\n" here is a line break of the layout.
    lines.append("  arguments: " + "\n  ".join(escape_text(line) for line in arguments.split("\n")))
    if call.outcome is None:
        lines.append("outcome: none yet (the call is running, or the gateway stopped during it)")
    else:
        lines.append(f"outcome (row {call.outcome_row_id})")
        outcome = call.outcome.model_dump()
        outcome["latency_ms"] = f"{call.outcome.latency_ms:.1f}"
        lines += [f"  {name}: {_value(value, max_chars)}" for name, value in outcome.items()]
    return "\n".join(lines)


def export_line(call: CallRecord) -> str:
    """Render a call as one line of JSON; non-ASCII is escaped, so no raw control reaches a terminal."""
    outcome: CallOutcome | None = call.outcome
    data = {
        "intent_row_id": call.intent_row_id,
        "outcome_row_id": call.outcome_row_id,
        "intent": call.intent.model_dump(),
        "outcome": outcome.model_dump() if outcome is not None else None,
    }
    return json.dumps(data, ensure_ascii=True, sort_keys=True)


def _escape_char(char: str) -> str:
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    if char in _FAMILIAR_ESCAPES:
        return _FAMILIAR_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell(value: str, max_chars: int = LIST_VALUE_MAX_CHARS) -> str:
    return escape_text(shorten(value, max_chars))


def _value(value: object, max_chars: int | None) -> str:
    text = "-" if value is None else str(value)
    return escape_text(text if max_chars is None else shorten(text, max_chars))


def _shorten_strings(value: JsonValue, max_chars: int | None) -> JsonValue:
    if max_chars is None:
        return value
    if isinstance(value, str):
        return shorten(value, max_chars)
    if isinstance(value, list):
        return [_shorten_strings(item, max_chars) for item in value]
    if isinstance(value, dict):
        return {shorten(key, max_chars): _shorten_strings(item, max_chars) for key, item in value.items()}
    return value
