"""mcp-guard: an MCP gateway that guards the calls an agent makes to MCP servers."""

import sys

__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """Import structlog while `rich` cannot be imported, then make `rich` importable again.

    structlog imports rich, when it is installed (e2b depends on it), for console tracebacks
    that mcp-guard never prints: its logs are JSON lines. That import alone adds about 3 MB to
    every gateway process. Later imports of rich (by e2b) work as usual.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()
