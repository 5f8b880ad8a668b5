"""The rendering of a call for the person asked to approve it.

Arguments are redacted like audit rows, escaped so that no control, invisible
or bidirectional character can disguise them, and long values are shortened
with their length and a digest, so the person can compare them with the source.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mcp_guard.audit import Redactor
from mcp_guard.pinning.display import escape_text

# Values longer than this are shortened to their first SHOWN_CHARACTERS characters.
LONGEST_SHOWN_VALUE = 200
SHOWN_CHARACTERS = 120
# A text value with line breaks is shown as a block of its lines, each indented behind BLOCK_MARK
# so that no line of a value can pass for a line of the question. At most this many of its lines
# and characters are shown.
BLOCK_LINES = 20
BLOCK_CHARACTERS = 1000
BLOCK_MARK = "  | "
# A call with more top-level arguments than this cannot be shown whole, so it cannot be approved.
MOST_ARGUMENTS = 50


class TooLongToShow(ValueError):
    """A call has more arguments than a person can be shown, so it cannot be approved."""


def minutes_text(minutes: int) -> str:
    """Return a whole number of minutes as text: "1 minute", "10 minutes"."""
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def render_arguments(arguments: dict[str, Any], redactor: Redactor) -> str:
    """Return one line per argument: `name: value`, redacted, escaped and shortened.

    Every argument is listed: a call with more than MOST_ARGUMENTS cannot be shown whole, and
    raises `TooLongToShow`. When redaction hid values, a last line gives their number and warns that the
    call runs with them as sent, so the person does not approve what they could not read.

    Raises:
        TooLongToShow: The call has more than MOST_ARGUMENTS arguments.
    """
    if len(arguments) > MOST_ARGUMENTS:
        raise TooLongToShow(
            f"it has {len(arguments)} arguments, more than the {MOST_ARGUMENTS} a person can be shown"
        )
    redacted = redactor.redact_value(arguments)
    if not isinstance(redacted, dict) or not redacted:
        return "(no arguments)"
    lines = [f"{escape_text(str(name))}: {_value(value)}" for name, value in sorted(redacted.items())]
    hidden = _count_hidden(arguments, redacted)
    if hidden:
        lines.append(
            f"WARNING: {hidden} value{'s are' if hidden != 1 else ' is'} hidden above because "
            f"{'they look' if hidden != 1 else 'it looks'} like secrets, and the call runs with "
            f"{'them' if hidden != 1 else 'it'} as sent. Deny it unless you expect secrets in this call."
        )
    return "\n".join(lines)


def _count_hidden(original: Any, redacted: Any) -> int:
    """Return how many values redaction changed, at any depth."""
    if isinstance(original, dict) and isinstance(redacted, dict):
        return sum(_count_hidden(value, redacted.get(key)) for key, value in original.items())
    if isinstance(original, list) and isinstance(redacted, list) and len(original) == len(redacted):
        return sum(_count_hidden(a, b) for a, b in zip(original, redacted, strict=True))
    return 0 if original == redacted else 1


def _value(value: Any) -> str:
    if isinstance(value, str) and "\n" in value:
        return _block(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    shown = escape_text(text)
    if isinstance(value, str):
        shown = f'"{shown}"'
    if len(text) <= LONGEST_SHOWN_VALUE:
        return shown
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{shown[:SHOWN_CHARACTERS]}... ({len(text)} characters, sha256 {digest})"


def _block(text: str) -> str:
    """Return a multi-line text as a header and its lines, each escaped and indented, shortened if long."""
    lines = text.split("\n")
    visible: list[str] = []
    used = 0
    for line in lines[:BLOCK_LINES]:
        if used + len(line) > BLOCK_CHARACTERS:
            visible.append(line[: max(BLOCK_CHARACTERS - used, 0)])
            break
        visible.append(line)
        used += len(line) + 1
    header = f"({len(lines)} lines, {len(text)} characters"
    if len(visible) < len(lines) or len(visible[-1]) < len(lines[len(visible) - 1]):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        header += f", sha256 {digest}; the first {len(visible)} lines shown, cut"
    body = "\n".join(BLOCK_MARK + escape_text(line) for line in visible)
    return f"{header})\n{body}"
