"""Least-privilege policy: decisions, the rule engine, argument constraints and tool definitions.

Nothing here does I/O or imports anything async, except that `path_under`
resolves paths against the filesystem through an injectable resolver.
"""

from mcp_guard.policy.decisions import Allow, Decision, Deny, RequireApproval
from mcp_guard.policy.engine import FirstUse, PolicyEngine, ServerSettings
from mcp_guard.policy.paths import PathResolver, default_resolver

__all__ = [
    "Allow",
    "Decision",
    "Deny",
    "FirstUse",
    "PathResolver",
    "PolicyEngine",
    "RequireApproval",
    "ServerSettings",
    "default_resolver",
]
