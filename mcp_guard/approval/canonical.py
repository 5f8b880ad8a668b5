"""The canonical form of a call's arguments, so that an approval binds to exactly what was approved.

Two argument objects get the same digest when they carry the same data. Keys
are sorted and numbers are written as Python parsed them, so `1e2` and `100.0`
are the same float, while `1` and `1.0` stay different, because a server may
treat them differently. Text is hashed exactly as received: `café` in NFC and
in NFD form are different bytes, and on most file systems different names, so
an approval of one does not cover the other. Anything else differs too:
another value, another type, another key.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any


class AmbiguousArguments(ValueError):
    """Two keys of one object are the same text in different Unicode forms, so no digest can be trusted."""


def argument_digest(arguments: dict[str, Any]) -> str:
    """Return `sha256:<hex>` of the canonical JSON form of `arguments`.

    Raises:
        AmbiguousArguments: Two keys normalise to the same text.
        ValueError: A number is NaN or infinite.
    """
    canonical = json.dumps(
        _normalise(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _normalise(value: Any) -> Any:
    """Return `value` unchanged, after checking that no object has two keys that read the same."""
    if isinstance(value, dict):
        seen: set[str] = set()
        for key, item in value.items():
            name = unicodedata.normalize("NFC", str(key))
            if name in seen:
                # A person shown both would read one name twice and could not tell the values apart.
                raise AmbiguousArguments(
                    f"the argument name {name!r} appears twice in different Unicode forms"
                )
            seen.add(name)
            _normalise(item)
    elif isinstance(value, list):
        for item in value:
            _normalise(item)
    return value
