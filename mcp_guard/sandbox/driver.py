"""Runs Python code inside a sandbox and reports the value of its last expression.

This file is not imported by the gateway: backends run it with the sandbox's own
interpreter (`python3 -I -S driver.py CHANNEL [CODE_FILE]`), so it uses the
standard library only. It reads the code from CODE_FILE, or from stdin without
one, and runs it as `__main__`. A final expression statement is evaluated the
way a notebook cell does. One JSON object with that value and any error goes to
the result channel:

- `fd:N` writes it to file descriptor N (the local backend passes a pipe);
- `marker:TEXT` writes it to stderr as the last line, after TEXT (for backends
  that only have stdout and stderr).

Everything in the JSON comes from the user's own code and goes back to the same
caller, so code that forges it gains nothing. The backend still parses it strictly.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import sys
import traceback
from typing import Any

# Maximum length of the reported repr of the last value; the rest is cut with a marker.
MAX_VALUE_CHARS = 20_000
# Largest PNG (from a value's _repr_png_) that is reported, in bytes.
MAX_PNG_BYTES = 2_000_000


def main() -> None:
    channel = sys.argv[1] if len(sys.argv) > 1 else "marker:"
    if len(sys.argv) > 2:
        with open(sys.argv[2], encoding="utf-8", errors="replace") as code_file:
            source = code_file.read()
    else:
        source = sys.stdin.read()
        sys.stdin.close()
        sys.stdin = open(os.devnull)  # noqa: SIM115 - stays open for the code's lifetime
    del sys.argv[1:]
    report = run(source)
    write_report(channel, report)
    sys.stdout.flush()
    os._exit(report["exit_status"])


def run(source: str) -> dict[str, Any]:
    report: dict[str, Any] = {"results": [], "error": None, "exit_status": 0}
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(source, "<code>", "exec")
        last = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = ast.Expression(final.value)
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<code>", "eval"), namespace)
            report["results"] = describe(value)
    except SystemExit as exc:
        report["exit_status"] = exit_status(exc.code)
        if exc.code not in (None, 0):
            report["error"] = {"name": "SystemExit", "value": str(exc.code), "traceback": ""}
    except BaseException as exc:  # the code's own error is its result
        report["exit_status"] = 1
        report["error"] = {
            "name": type(exc).__name__,
            "value": str(exc),
            "traceback": user_traceback(exc),
        }
    return report


def exit_status(code: object) -> int:
    """Return the status a Python process exits with after `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256
    return 1


def describe(value: object) -> list[dict[str, str]]:
    if value is None:
        return []
    results = []
    png = getattr(value, "_repr_png_", None)
    if callable(png):
        try:
            data = png()
        except Exception:
            data = None
        if isinstance(data, bytes) and len(data) <= MAX_PNG_BYTES:
            results.append({"kind": "png", "data": base64.b64encode(data).decode("ascii")})
    text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + " ...[cut]"
    results.append({"kind": "text", "data": text})
    return results


def user_traceback(exc: BaseException) -> str:
    # Frames before the first one in the code are this driver's and the parser's, so they are left
    # out. A syntax error has no frame in the code, so only its message and line remain.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def write_report(channel: str, report: dict[str, Any]) -> None:
    text = json.dumps(report)
    kind, _, target = channel.partition(":")
    if kind == "fd":
        try:
            with os.fdopen(int(target), "w") as out:
                out.write(text)
        except (OSError, ValueError):
            pass  # the code closed the channel; the run is reported without its value
        return
    sys.stderr.flush()
    os.write(2, ("\n" + target + text + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
