"""The upstream side: the MCP server clients connect to, and the call pipeline.

Only this package imports the MCP server API.
"""
