"""Exported names: how a downstream tool or prompt name becomes a client-safe name.

A name is exported as `<prefix>__<name>`. Every exported name matches
`^[A-Za-z0-9_-]{1,max}$`. Characters outside that set are mapped to `_`. A name
that had to be mapped or is too long gets a short hash of its server and
original name, and so do two unchanged names that would collide, so the result
is deterministic and unique. The mapping is kept as an explicit table, and no
code splits an exported name on the separator.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

SEPARATOR = "__"
EXPORTED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OUTSIDE_SET = re.compile(r"[^A-Za-z0-9_-]")
# 8 hex digits are 32 bits: a collision among one gateway's names needs tens of thousands of
# names to become likely, and a collision is still detected and lengthened below.
HASH_DIGITS = 8

NameKey = tuple[str, str]
"""A downstream name: (server id, name as the server reported it)."""


def export_names(
    names: Iterable[NameKey], prefixes: Mapping[str, str], max_length: int
) -> dict[NameKey, str]:
    """Assign every downstream name a unique exported name.

    Args:
        names: Downstream names; duplicates are ignored.
        prefixes: Export prefix of each server id.
        max_length: Longest exported name allowed (at least 16).

    Returns:
        The exported name of each downstream name.
    """
    candidates: dict[NameKey, str] = {}
    needs_hash: set[NameKey] = set()
    for key in dict.fromkeys(names):
        server, name = key
        mapped = _OUTSIDE_SET.sub("_", name) or "_"
        candidate = f"{prefixes[server]}{SEPARATOR}{mapped}"
        candidates[key] = candidate
        if mapped != name or len(candidate) > max_length:
            needs_hash.add(key)

    # A name that needed no change keeps its plain form unless another such name has the same one.
    # Then both get a hash, so neither shadows the other whatever the listing order.
    owners: dict[str, list[NameKey]] = defaultdict(list)
    for key, candidate in candidates.items():
        if key not in needs_hash:
            owners[candidate].append(key)
    for keys in owners.values():
        if len(keys) > 1:
            needs_hash.update(keys)

    exported = {key: candidate for key, candidate in candidates.items() if key not in needs_hash}
    taken = set(exported.values())
    for key in sorted(needs_hash):
        exported[key] = _hashed(key, candidates[key], max_length, taken)
        taken.add(exported[key])
    return exported


def _hashed(key: NameKey, candidate: str, max_length: int, taken: set[str]) -> str:
    digest = hashlib.sha256("\0".join(key).encode("utf-8", "surrogatepass")).hexdigest()
    for digits in range(HASH_DIGITS, len(digest) + 1, 4):
        suffix = "_" + digest[:digits]
        name = candidate[: max_length - len(suffix)] + suffix
        if name not in taken:
            return name
    raise RuntimeError(f"no unique exported name for {key!r}")  # needs a SHA-256 collision
