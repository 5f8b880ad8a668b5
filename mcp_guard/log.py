"""The one place logging is configured.

Every log line is one JSON object on stderr. Nothing is ever written to stdout,
which carries the MCP protocol in stdio mode. Standard-library loggers (the MCP
SDK, uvicorn) are routed through the same renderer. Other modules only call
`structlog.get_logger(...)` and emit events.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog
from structlog.typing import Processor

LEVELS = ("debug", "info", "warning", "error")
# Library loggers are noisy at INFO (one line per HTTP request, per session); the gateway's
# own events record what happened.
LIBRARY_LEVEL = logging.WARNING


def configure_logging(level: str = "info", extra_processors: Sequence[Processor] = ()) -> None:
    """Send structlog and standard-library logs to stderr as JSON lines.

    Args:
        level: Lowest level written: one of `LEVELS`.
        extra_processors: Processors run on every event before rendering (redaction, for one).
    """
    numeric = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_logger_name,
        *extra_processors,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, LIBRARY_LEVEL))
    # uvicorn installs its own handlers unless configured otherwise, so route them to the root instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _add_logger_name(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("module", record.name)
    return event_dict
