"""Shaping downstream results for the client that asked.

A downstream result arrives as the wire dict its server sent, shaped for the
era the gateway spoke to that server. Before it goes up it loses the
downstream's protocol bookkeeping (result type, cache hints, identity stamp),
has any rewritten resource URIs mapped to the ones the client was given, and is
adapted to the client's era. Everything else passes through untouched, so
content bytes, annotations and custom `_meta` keys arrive as the server sent them.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_guard.downstream.catalog import MODERN_ERA, Catalog, clean_meta

# Added again by the SDK for the client's own era, so the downstream's values are dropped.
_ENVELOPE_KEYS = ("resultType", "ttlMs", "cacheScope", "_meta")


def is_input_required(result: dict[str, Any]) -> bool:
    """Return whether a downstream result requests more input from the client (2026-07-28 MRTR)."""
    return result.get("resultType") == "input_required"


def shape_tool_result(
    result: dict[str, Any], server: str, catalog: Catalog, client_version: str
) -> dict[str, Any]:
    """Return a downstream tools/call result as the client's era expects it."""
    shaped = _without_envelope(result)
    if catalog.uri_rewrites:
        shaped["content"] = [_rewrite_block(block, server, catalog) for block in shaped.get("content", [])]
    structured = shaped.get("structuredContent")
    if client_version != MODERN_ERA and "structuredContent" in shaped and not isinstance(structured, dict):
        # Before 2026-07-28 structured content must be an object. The value stays readable
        # as text, which is what a client of that era shows the model anyway.
        del shaped["structuredContent"]
        if not shaped.get("content"):
            shaped["content"] = [{"type": "text", "text": json.dumps(structured, ensure_ascii=False)}]
    return shaped


def shape_read_result(result: dict[str, Any], server: str, catalog: Catalog) -> dict[str, Any]:
    """Return a downstream resources/read result with the URIs the client was given."""
    shaped = _without_envelope(result)
    contents = shaped.get("contents")
    if catalog.uri_rewrites and isinstance(contents, list):
        shaped["contents"] = [_rewrite_uri(item, server, catalog) for item in contents]
    return shaped


def shape_plain_result(result: dict[str, Any]) -> dict[str, Any]:
    """Return a downstream prompts/get or completion result without its envelope."""
    return _without_envelope(result)


def _without_envelope(result: dict[str, Any]) -> dict[str, Any]:
    shaped = {key: value for key, value in result.items() if key not in _ENVELOPE_KEYS}
    meta = clean_meta(result.get("_meta"))
    if meta is not None:
        shaped["_meta"] = meta
    return shaped


def _rewrite_block(block: Any, server: str, catalog: Catalog) -> Any:
    if not isinstance(block, dict):
        return block
    if block.get("type") == "resource_link":
        return _rewrite_uri(block, server, catalog)
    if block.get("type") == "resource" and isinstance(block.get("resource"), dict):
        return {**block, "resource": _rewrite_uri(block["resource"], server, catalog)}
    return block


def _rewrite_uri(item: Any, server: str, catalog: Catalog) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("uri"), str):
        return item
    return {**item, "uri": catalog.exported_uri(server, item["uri"])}
