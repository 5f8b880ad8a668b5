"""mcp-guard: an MCP gateway that guards the calls an agent makes to MCP servers."""

__version__ = "0.1.0"
