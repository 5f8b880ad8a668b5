"""`mcp-guard init`: put mcp-guard in front of the servers an MCP client already uses.

`sources` finds and parses the client's file, and `claude_user` reads the scopes of Claude
Code's `~/.claude.json`. `importing` turns the entries into policy server tables with the
secrets moved out, `probe` lists each server's tools, and `render` writes the policy and
client configuration text. `outputs` decides where the files and the state folder go and what
can reach them, `summary` prints the result, and `command` is the command itself.
"""

from mcp_guard.setup.command import add_init_command, run_init_command

__all__ = ["add_init_command", "run_init_command"]
