"""The canonical form of a call's arguments, so that an approval binds to exactly what was approved.

Two argument objects get the same digest when they carry the same data. Keys
are sorted, strings (keys and values) are put in Unicode NFC form, and numbers
are written as Python parsed them. So `1e2` and `100.0` are the same float,
while `1` and `1.0` stay different, because a server may treat them
differently. Anything else differs: another value, another type, another key.
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
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        normalised: dict[str, Any] = {}
        for key, item in value.items():
            name = unicodedata.normalize("NFC", str(key))
            if name in normalised:
                raise AmbiguousArguments(
                    f"the argument name {name!r} appears twice in different Unicode forms"
                )
            normalised[name] = _normalise(item)
        return normalised
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value
