"""Connections to downstream MCP servers and the catalogue of what they export.

Only this package imports the MCP client API.
"""
