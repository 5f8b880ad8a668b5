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
# Arguments after this many are summarised in one line.
SHOWN_ARGUMENTS = 20


def render_arguments(arguments: dict[str, Any], redactor: Redactor) -> str:
    """Return one line per argument: `name: value`, redacted, escaped and shortened."""
    redacted = redactor.redact_value(arguments)
    if not isinstance(redacted, dict) or not redacted:
        return "(no arguments)"
    lines = []
    for index, (name, value) in enumerate(sorted(redacted.items())):
        if index == SHOWN_ARGUMENTS:
            lines.append(f"... and {len(redacted) - SHOWN_ARGUMENTS} more arguments")
            break
        lines.append(f"{escape_text(str(name))}: {_value(value)}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    shown = escape_text(text)
    if isinstance(value, str):
        shown = f'"{shown}"'
    if len(text) <= LONGEST_SHOWN_VALUE:
        return shown
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{shown[:SHOWN_CHARACTERS]}... ({len(text)} characters, sha256 {digest})"
