"""The catalogue: per-era tool lists, cleaned definitions and shared resource URIs."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.downstream.catalog import LEGACY_ERA, MODERN_ERA, Catalog, SourceListing, build_catalog
from mcp_guard.gateway.results import shape_tool_result

OBJECT = {"type": "object", "properties": {}}


def listing(tools: list[dict[str, Any]] = (), resources: list[dict[str, Any]] = ()) -> SourceListing:  # type: ignore[assignment]
    return SourceListing(list(tools), list(resources), [], [], completions=False)


def build(**listings: SourceListing) -> Catalog:
    return build_catalog(listings, {name: name for name in listings}, 48)


def test_scalar_output_schema_modern_only() -> None:
    catalog = build(a=listing([{"name": "n", "inputSchema": OBJECT, "outputSchema": {"type": "integer"}}]))

    assert [t["name"] for t in catalog.tools_for_era(MODERN_ERA)] == ["a__n"]
    assert catalog.tools_for_era(LEGACY_ERA) == []


def test_invalid_tool_dropped_alone() -> None:
    tools = [{"name": "bad", "inputSchema": "not a schema"}, {"name": "good", "inputSchema": OBJECT}]

    catalog = build(a=listing(tools))

    assert list(catalog.tools) == ["a__good"]


@pytest.mark.attack("downstream identity passed through")
def test_reserved_meta_and_execution_removed() -> None:
    tool = {
        "name": "t",
        "inputSchema": OBJECT,
        "execution": {"taskSupport": "optional"},
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "x"}, "vendor/key": 1},
    }

    definition = build(a=listing([tool])).tools["a__t"].definition

    assert "execution" not in definition
    assert definition["_meta"] == {"vendor/key": 1}


def test_task_required_tool_hidden() -> None:
    tool = {"name": "t", "inputSchema": OBJECT, "execution": {"taskSupport": "required"}}

    assert build(a=listing([tool])).tools == {}


def test_shared_resource_uri_rewritten() -> None:
    shared = {"uri": "file:///README.md", "name": "readme"}

    catalog = build(a=listing(resources=[shared]), b=listing(resources=[shared]))

    exported = sorted(catalog.resources)
    assert exported == ["mcp-guard://a/file%3A%2F%2F%2FREADME.md", "mcp-guard://b/file%3A%2F%2F%2FREADME.md"]
    assert catalog.resource_for_uri(exported[1]) == ("b", "file:///README.md")
    assert catalog.resource_for_uri("file:///README.md") is None


def test_links_in_results_follow_rewrite() -> None:
    shared = {"uri": "file:///README.md", "name": "readme"}
    catalog = build(a=listing(resources=[shared]), b=listing(resources=[shared]))
    result = {"content": [{"type": "resource_link", "uri": "file:///README.md", "name": "readme"}]}

    shaped = shape_tool_result(result, "b", catalog, MODERN_ERA)

    assert shaped["content"][0]["uri"] == "mcp-guard://b/file%3A%2F%2F%2FREADME.md"


def test_scalar_structured_content_for_legacy() -> None:
    result = {"content": [{"type": "text", "text": "42"}], "structuredContent": 42, "resultType": "complete"}

    legacy = shape_tool_result(result, "a", Catalog(), LEGACY_ERA)
    modern = shape_tool_result(result, "a", Catalog(), MODERN_ERA)

    assert "structuredContent" not in legacy
    assert legacy["content"] == [{"type": "text", "text": "42"}]
    assert modern["structuredContent"] == 42
    assert "resultType" not in modern
