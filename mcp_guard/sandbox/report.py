"""Reading the JSON report a run's code leaves: the value of its last expression and its error.

The driver (`driver.py`) and the wasm runtime write the report from inside the
sandbox, so its content is untrusted: every field is checked here, and anything
malformed is dropped rather than passed on.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_guard.sandbox.base import CodeError, RichOutput


def parse_report(data: bytes) -> dict[str, Any]:
    """Return the report object in `data`, or an empty one when it is not a JSON object."""
    try:
        parsed = json.loads(data.strip() or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def report_error(value: object) -> CodeError | None:
    """Return the report's error when it has a string name, value and traceback."""
    if not isinstance(value, dict):
        return None
    fields = [value.get(key) for key in ("name", "value", "traceback")]
    if not all(isinstance(field, str) for field in fields):
        return None
    name, text, traceback = (str(field) for field in fields)
    return CodeError(name=name, value=text, traceback=traceback)


def report_exit_status(value: object, error: CodeError | None) -> int:
    """Return the report's exit status when it is one (0 to 255), else 1 after an error and 0 without."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    return 1 if error is not None else 0


def report_results(value: object) -> list[RichOutput]:
    """Return the report's results that are text or PNG entries with string data."""
    if not isinstance(value, list):
        return []
    return [
        RichOutput(kind=item["kind"], data=item["data"])
        for item in value
        if isinstance(item, dict)
        and item.get("kind") in ("text", "png")
        and isinstance(item.get("data"), str)
    ]
