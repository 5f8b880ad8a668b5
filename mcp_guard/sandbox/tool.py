"""The run_code tool as clients see it: its definition, its arguments and its result.

The definition is built from the `[sandbox]` settings (the languages the backend
runs, the largest code accepted), and the result carries the run's output both
as text content for the model and as `structuredContent` that matches the
declared output schema. Running the code is left to `runner.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.sandbox.base import LANGUAGES, OUTPUT_CAP_MARKER, CodeRun, Language, RunOutcome

DESCRIPTION = (
    "Run code in an isolated sandbox and return its output. Each call starts in an empty workspace{session} "
    "with no network{network}, no access to this machine's files or environment, and limits of "
    "{timeout:g} s, {memory} MiB of memory and {output} bytes of output. Python returns the value of its "
    "last expression, as a notebook cell does."
)

# Images one result may carry, and the largest one kept (as base64 characters).
MAX_IMAGES = 4
MAX_IMAGE_CHARS = 4 * 1024 * 1024
VALUE_CUT_MARKER = " ...[mcp-guard: value cut at the output cap]"
SESSION_ENDED = (
    "This session's sandbox was discarded with the stopped run: the files and variables of its earlier "
    "runs are gone, and the next run starts in a new, empty sandbox."
)

_ERROR_SCHEMA = {
    "type": ["object", "null"],
    "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "traceback": {"type": "string"}},
    "required": ["name", "value", "traceback"],
}
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "value": {"type": ["string", "null"], "description": "repr of the last expression's value"},
        "error": _ERROR_SCHEMA,
        "exitCode": {"type": ["integer", "null"]},
        "seconds": {"type": "number"},
        "stopped": {
            "type": ["string", "null"],
            "enum": ["timeout", "output_cap", "memory", "cancelled", None],
        },
        "outputCapped": {"type": "boolean"},
    },
    "required": ["stdout", "stderr", "value", "error", "exitCode", "seconds", "stopped", "outputCapped"],
}


class CodeArgumentError(ValueError):
    """The run_code arguments are not usable; the message names the value and the fix."""


def tool_definition(
    settings: SandboxSettings, languages: Iterable[Language], backend: str = "local"
) -> dict[str, Any]:
    """Return the run_code tool definition for these settings and the backend's languages."""
    offered = [language for language in LANGUAGES if language in set(languages)]
    session = ", kept for this session's later calls," if settings.session_sandboxes else ""
    network = "" if not settings.allowed_hosts else " except to " + ", ".join(settings.allowed_hosts)
    return {
        "name": settings.tool_name,
        "title": "Run code in a sandbox",
        "description": DESCRIPTION.format(
            session=session,
            network=network,
            timeout=settings.timeout_seconds,
            memory=settings.memory_mb,
            output=settings.max_output_bytes,
        )
        + _environment_note(settings, backend),
        "inputSchema": {
            "type": "object",
            "properties": {
                "language": {"type": "string", "enum": offered, "description": "Language of the code."},
                "code": {
                    "type": "string",
                    "maxLength": settings.max_code_bytes,
                    "description": "The program to run.",
                },
            },
            "required": ["language", "code"],
            "additionalProperties": False,
        },
        "outputSchema": OUTPUT_SCHEMA,
        "annotations": {
            "title": "Run code in a sandbox",
            "readOnlyHint": False,
            "destructiveHint": False,
            "idempotentHint": False,
            "openWorldHint": bool(settings.allowed_hosts),
        },
    }


def _environment_note(settings: SandboxSettings, backend: str) -> str:
    """Tell the model what the interpreters offer, so that it does not reach for what is not there."""
    if backend == "local":
        return " Shell code runs in POSIX sh, not bash. Python has its standard library only."
    if backend == "docker":
        return " Shell code runs in the image's sh. Python has what the image installed."
    if backend == "wasm":
        allowed = ", ".join(settings.wasm.allowed_imports)
        return f" Python runs in Pyodide and may import only: {allowed}."
    return " Shell code runs in bash. Python has the code interpreter's usual packages."


def parse_arguments(
    arguments: dict[str, Any], settings: SandboxSettings, languages: Iterable[Language]
) -> CodeRun:
    """Check the run_code arguments and return the run they ask for.

    Raises:
        CodeArgumentError: A value is missing, of the wrong type, unsupported or too large.
    """
    offered = sorted(set(languages))
    language = arguments.get("language")
    if language not in offered:
        raise CodeArgumentError(
            f"language {language!r} is not available in this sandbox; use one of {', '.join(offered)}."
        )
    code = arguments.get("code")
    if not isinstance(code, str):
        raise CodeArgumentError("code must be a string holding the program to run.")
    size = len(code.encode("utf-8", errors="surrogatepass"))
    if size > settings.max_code_bytes:
        raise CodeArgumentError(
            f"code is {size} bytes, over the {settings.max_code_bytes}-byte limit; send a shorter program."
        )
    extra = sorted(set(arguments) - {"language", "code"})
    if extra:
        raise CodeArgumentError(f"unexpected argument {extra[0]!r}; run_code takes only language and code.")
    return CodeRun(language=language, code=code)


def render_outcome(
    outcome: RunOutcome, max_output_bytes: int, *, session_ended: bool = False
) -> dict[str, Any]:
    """Turn a run's outcome into the tools/call result: text and images for the model, and structured data.

    `session_ended` is true when the run was stopped in a session's sandbox, which the runner then
    discards. The text then states that the session's files and variables are gone.
    """
    value = next((result.data for result in outcome.results if result.kind == "text"), None)
    value_cut = value is not None and len(value) > max_output_bytes
    if value is not None and value_cut:
        # Backends bound the value too, but not all of them to the output cap.
        value = value[:max_output_bytes] + VALUE_CUT_MARKER
    error = outcome.error
    structured = {
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "value": value,
        "error": None
        if error is None
        else {"name": error.name, "value": error.value, "traceback": error.traceback},
        "exitCode": outcome.exit_code,
        "seconds": round(outcome.seconds, 3),
        "stopped": outcome.stopped,
        "outputCapped": outcome.output_capped or value_cut,
    }
    text = _summary(outcome, value, max_output_bytes)
    if session_ended:
        text += "\n\n" + SESSION_ENDED
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    images = [
        result.data
        for result in outcome.results
        if result.kind == "png" and len(result.data) <= MAX_IMAGE_CHARS
    ]
    content += [{"type": "image", "data": data, "mimeType": "image/png"} for data in images[:MAX_IMAGES]]
    failed = error is not None or outcome.stopped is not None or (outcome.exit_code or 0) != 0
    return {"content": content, "structuredContent": structured, "isError": failed}


def _summary(outcome: RunOutcome, value: str | None, max_output_bytes: int) -> str:
    status = _status(outcome)
    parts = [f"{status} after {outcome.seconds:.2f} s."]
    if outcome.stdout:
        parts.append("stdout:\n" + outcome.stdout)
    if outcome.stderr:
        parts.append("stderr:\n" + outcome.stderr)
    if outcome.output_capped:
        parts.append(OUTPUT_CAP_MARKER.format(limit=max_output_bytes).strip())
    if value is not None:
        parts.append("value:\n" + value)
    if outcome.error is not None:
        error = outcome.error
        parts.append(error.traceback.rstrip() or f"{error.name}: {error.value}")
    return "\n\n".join(parts)


def _status(outcome: RunOutcome) -> str:
    if outcome.stopped == "timeout":
        return "Stopped: the time limit ([sandbox] timeout_seconds) was reached"
    if outcome.stopped == "output_cap":
        return "Stopped: the output limit ([sandbox] max_output_bytes) was reached"
    if outcome.stopped == "memory":
        return "Stopped: the memory limit ([sandbox] memory_mb) was reached"
    if outcome.stopped == "cancelled":
        return "Stopped: the call was cancelled"
    if outcome.exit_code is None:
        return "Ended without an exit status"
    return f"Exited with status {outcome.exit_code}"
