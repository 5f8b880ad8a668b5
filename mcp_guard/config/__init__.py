"""The policy file: frozen models and loading with key-path errors."""

from mcp_guard.config.loading import load_config, parse_config
from mcp_guard.config.models import GatewayConfig, HttpServerConfig, ServerConfig, StdioServerConfig

__all__ = [
    "GatewayConfig",
    "HttpServerConfig",
    "ServerConfig",
    "StdioServerConfig",
    "load_config",
    "parse_config",
]
