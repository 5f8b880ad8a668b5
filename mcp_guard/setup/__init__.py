"""`mcp-guard init`: put mcp-guard in front of the servers an MCP client already uses.

`sources` finds and parses the client's file, `importing` turns its entries into policy
server tables with the secrets moved out, `probe` lists each server's tools, `render`
writes the policy and client configuration text, and `command` is the command itself.
"""

from mcp_guard.setup.command import add_init_command, run_init_command

__all__ = ["add_init_command", "run_init_command"]
