"""Writing values back in TOML notation, for messages about a policy file.

A message that quotes a value the way the file writes it lets a person find and
fix it: `"1"` is a string, `1` an integer, and a regular expression keeps its
backslashes. Parsing TOML is left to `tomllib`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

# Escapes a TOML basic string ("...") has a short form for.
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
# Characters a basic string must escape: the quote, the backslash, and control characters other
# than tab (TOML 1.0 section "String").
_MUST_ESCAPE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
# Characters a literal string ('...') cannot contain.
_NOT_LITERAL = re.compile(r"['\x00-\x08\x0a-\x1f\x7f]")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """Return `value` as it would be written in a TOML file.

    A string with a backslash is written as a literal string ('...') when it can be, so a
    regular expression such as '\\bSELECT\\b' reads as it is written in a policy file.
    Values TOML cannot hold are shown with `repr`.
    """
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{_toml_key(key)} = {toml_value(item)}" for key, item in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    return repr(value)


def toml_string(text: str) -> str:
    """Return `text` as a TOML string: literal ('...') if it has a backslash and can be, else basic ("...")."""
    if "\\" in text and not _NOT_LITERAL.search(text):
        return f"'{text}'"
    return '"' + _MUST_ESCAPE.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04X}"


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _toml_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.match(text) else toml_string(text)
