"""The catalogue: every downstream tool, prompt and resource under its exported name.

A `Catalog` is an immutable snapshot built from the servers' listings. The
registry swaps in a new one whenever a listing changes, so a request always
reads one consistent view. The catalogue owns the explicit maps from exported
names and URIs back to (server, downstream name) and the per-era shapes of the
tool list: a tool whose definition one protocol era cannot carry is dropped
for that era only, with a warning, and never breaks the whole list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate
from mcp_types import methods
from pydantic import ValidationError

from mcp_guard.downstream.naming import export_names
from mcp_guard.policy.definitions import clean_definition, definition_hash

log = structlog.get_logger(module=__name__)

LEGACY_ERA = "2025-11-25"
MODERN_ERA = "2026-07-28"
# Keys under this prefix in `_meta` belong to the protocol. A downstream's values (its
# serverInfo stamp, for one) must not reach the client as if the gateway had sent them.
RESERVED_META_PREFIX = "io.modelcontextprotocol/"
# Scheme of the URIs given to resources whose URI two servers share.
COLLISION_SCHEME = "mcp-guard"


@dataclass(frozen=True)
class ExportedTool:
    """A downstream tool under its exported name."""

    server: str
    name: str
    """The tool's name on its server."""
    exported: str
    definition: dict[str, Any]
    """The tool as sent to clients (exported name, cleaned `_meta`)."""
    eras: frozenset[str]
    """Protocol eras whose clients can be shown this tool."""
    digest: str = ""
    """Hash of the definition as the server sent it, which pins compare (see `policy.definitions`)."""


@dataclass(frozen=True)
class ExportedPrompt:
    """A downstream prompt under its exported name."""

    server: str
    name: str
    exported: str
    definition: dict[str, Any]


@dataclass(frozen=True)
class ExportedResource:
    """A downstream resource under its exported URI."""

    server: str
    uri: str
    exported: str
    definition: dict[str, Any]


@dataclass(frozen=True)
class ExportedTemplate:
    """A downstream resource template; templates keep their URI template."""

    server: str
    template: UriTemplate | None
    definition: dict[str, Any]


@dataclass(frozen=True)
class Catalog:
    """One consistent view of everything the gateway re-exports."""

    tools: Mapping[str, ExportedTool] = field(default_factory=dict)
    prompts: Mapping[str, ExportedPrompt] = field(default_factory=dict)
    resources: Mapping[str, ExportedResource] = field(default_factory=dict)
    templates: Sequence[ExportedTemplate] = ()
    completions: frozenset[str] = frozenset()
    """Servers that support completion/complete."""
    uri_rewrites: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(server, downstream URI) -> exported URI, for URIs that had to be rewritten."""

    def tools_for_era(self, version: str) -> list[dict[str, Any]]:
        """Return the tool definitions a client speaking `version` can be shown."""
        era = MODERN_ERA if version == MODERN_ERA else LEGACY_ERA
        return [tool.definition for tool in self.tools.values() if era in tool.eras]

    def resource_for_uri(self, uri: str) -> tuple[str, str] | None:
        """Return (server, downstream URI) for an exported URI, or None when no server has it."""
        exact = self.resources.get(uri)
        if exact is not None:
            return exact.server, exact.uri
        for template in self.templates:
            if template.template is not None and template.template.match(uri) is not None:
                return template.server, uri
        return None

    def exported_uri(self, server: str, uri: str) -> str:
        """Return the URI clients know for `uri` of `server`."""
        return self.uri_rewrites.get((server, uri), uri)


@dataclass(frozen=True)
class SourceListing:
    """The part of a downstream listing the catalogue reads."""

    tools: Sequence[dict[str, Any]]
    resources: Sequence[dict[str, Any]]
    resource_templates: Sequence[dict[str, Any]]
    prompts: Sequence[dict[str, Any]]
    completions: bool


def build_catalog(
    listings: Mapping[str, SourceListing],
    prefixes: Mapping[str, str],
    max_name_length: int,
    builtin: Sequence[ExportedTool] = (),
) -> Catalog:
    """Build a catalogue from each server's listing, in the order servers are configured.

    `builtin` tools (the gateway's own, such as run_code) come first under their own names,
    which contain no `__` and so never meet a downstream tool's `<prefix>__<tool>` name.
    """
    tool_names = export_names(
        ((server, tool["name"]) for server, listing in listings.items() for tool in _named(listing.tools)),
        prefixes,
        max_name_length,
    )
    prompt_names = export_names(
        (
            (server, prompt["name"])
            for server, listing in listings.items()
            for prompt in _named(listing.prompts)
        ),
        prefixes,
        max_name_length,
    )
    tools: dict[str, ExportedTool] = {tool.exported: tool for tool in builtin}
    prompts: dict[str, ExportedPrompt] = {}
    for server, listing in listings.items():
        for tool in _named(listing.tools):
            exported = _export_tool(server, tool, tool_names[(server, tool["name"])])
            if exported is not None:
                tools[exported.exported] = exported
        for prompt in _named(listing.prompts):
            name = prompt_names[(server, prompt["name"])]
            prompts[name] = ExportedPrompt(server, prompt["name"], name, {**_clean(prompt), "name": name})
    resources, rewrites = _export_resources(listings, prefixes)
    return Catalog(
        tools=tools,
        prompts=prompts,
        resources=resources,
        templates=_export_templates(listings),
        completions=frozenset(server for server, listing in listings.items() if listing.completions),
        uri_rewrites=rewrites,
    )


def export_builtin_tool(server: str, definition: dict[str, Any]) -> ExportedTool:
    """Export one of the gateway's own tools under its own name, checked like a downstream tool."""
    exported = _export_tool(server, definition, definition["name"])
    if exported is None:
        raise ValueError(f"the built-in tool {definition['name']!r} is invalid in every protocol era")
    return exported


def clean_meta(meta: Any) -> dict[str, Any] | None:
    """Drop protocol-reserved keys from a downstream `_meta` value."""
    if not isinstance(meta, dict):
        return None
    kept = {key: value for key, value in meta.items() if not str(key).startswith(RESERVED_META_PREFIX)}
    return kept or None


def _named(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item.get("name"), str) and item["name"]]


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    cleaned = {key: value for key, value in item.items() if key != "_meta"}
    meta = clean_meta(item.get("_meta"))
    if meta is not None:
        cleaned["_meta"] = meta
    return cleaned


def _export_tool(server: str, tool: dict[str, Any], exported: str) -> ExportedTool | None:
    execution = tool.get("execution")
    if isinstance(execution, dict) and execution.get("taskSupport") == "required":
        # The gateway offers no task augmentation, so such a tool could never be called.
        log.warning("tool_hidden_needs_tasks", server=server, tool=tool["name"])
        return None
    digest = definition_hash(tool)
    # Hidden characters and over-long texts are removed before a model ever reads them.
    definition = {key: value for key, value in clean_definition(_clean(tool)).items() if key != "execution"}
    definition["name"] = exported
    eras = frozenset(era for era in (LEGACY_ERA, MODERN_ERA) if _valid_in(era, definition))
    if len(eras) < 2:
        log.warning(
            "tool_dropped_for_era",
            server=server,
            tool=tool["name"],
            shown_to=sorted(eras),
            reason="its definition is invalid in the other protocol era",
        )
    if not eras:
        return None
    return ExportedTool(server, tool["name"], exported, definition, eras, digest)


def _valid_in(era: str, definition: dict[str, Any]) -> bool:
    result: dict[str, Any] = {"tools": [definition]}
    if era == MODERN_ERA:
        result.update(resultType="complete", ttlMs=0, cacheScope="private")
    try:
        methods.validate_server_result("tools/list", era, result)
    except ValidationError:
        return False
    return True


def _export_resources(
    listings: Mapping[str, SourceListing], prefixes: Mapping[str, str]
) -> tuple[dict[str, ExportedResource], dict[tuple[str, str], str]]:
    owners: dict[str, list[str]] = {}
    for server, listing in listings.items():
        for resource in listing.resources:
            uri = resource.get("uri")
            if isinstance(uri, str) and server not in owners.setdefault(uri, []):
                owners[uri].append(server)
    resources: dict[str, ExportedResource] = {}
    rewrites: dict[tuple[str, str], str] = {}
    for server, listing in listings.items():
        for resource in listing.resources:
            uri = resource.get("uri")
            if not isinstance(uri, str):
                continue
            exported = uri
            if len(owners[uri]) > 1:
                # Two servers publish the same URI: both get a URI naming their server.
                exported = f"{COLLISION_SCHEME}://{prefixes[server]}/{quote(uri, safe='')}"
                rewrites[(server, uri)] = exported
                log.warning("resource_uri_shared", uri=uri, servers=owners[uri], exported=exported)
            resources[exported] = ExportedResource(
                server, uri, exported, {**_clean(resource), "uri": exported}
            )
    return resources, rewrites


def _export_templates(listings: Mapping[str, SourceListing]) -> list[ExportedTemplate]:
    templates: list[ExportedTemplate] = []
    seen: dict[str, str] = {}
    for server, listing in listings.items():
        for template in listing.resource_templates:
            text = template.get("uriTemplate")
            if not isinstance(text, str):
                continue
            try:
                parsed: UriTemplate | None = UriTemplate.parse(text)
            except InvalidUriTemplate:
                log.warning("resource_template_invalid", server=server, template=text)
                parsed = None
            if text in seen:
                log.warning(
                    "resource_template_shared",
                    template=text,
                    servers=[seen[text], server],
                    reads_go_to=seen[text],
                )
            seen.setdefault(text, server)
            templates.append(ExportedTemplate(server, parsed, _clean(template)))
    return templates
