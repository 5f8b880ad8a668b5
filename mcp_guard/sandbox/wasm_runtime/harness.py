"""Runs the code of the wasm sandbox inside Pyodide; loaded by runner.mjs, never imported by the gateway.

`install_guard` runs once, after Pyodide has loaded and before any user code runs. It cuts Python
off from JavaScript: the modules that bridge to it (`js`, `pyodide_js`, `pyodide`, `_pyodide`,
`micropip`, ...) are dropped from `sys.modules`, Pyodide's finder for JavaScript modules is removed
from `sys.meta_path`, and a finder that rejects those names is put first. It then replaces
`__import__` so that the code itself imports only top-level modules on the allow list, while the
standard library modules that allowed modules import for their own use still load.

`run_code` runs one piece of code in a namespace kept between calls, so a session keeps its
globals, and returns a JSON report: the repr of the last expression's value and the error, if any.

NOTE: in-interpreter checks are not a security boundary on their own, because Python code can
reach hidden objects through introspection. The containment of the file system, processes and
network comes from runner.mjs and Node.js (see runner.mjs); the import allow list sets policy.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import sys
import traceback
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# Modules that reach JavaScript, and through it Node.js. They are never importable, even when
# listed in allowed_imports.
BRIDGE_MODULES = frozenset(
    {
        "js",
        "pyodide_js",
        "pyodide",
        "_pyodide",
        "_pyodide_core",
        "micropip",
        "pyodide_http",
        "_pyodide_importhook",
    }
)
# Importable whatever allowed_imports lists. Codec lookups import `encodings.*` with a bare
# `__import__` call that passes no importer's globals, as str.encode("idna") does when socket
# resolves a host. A codec only converts text.
ALWAYS_ALLOWED = frozenset({"encodings"})
# Maximum length of the reported repr of the last value; the rest is cut with a marker.
MAX_VALUE_CHARS = 20_000
# Maximum length of the reported error message and traceback.
MAX_ERROR_CHARS = 20_000
MAX_TRACEBACK_CHARS = 50_000
CODE_FILENAME = "<code>"
# The file name runner.mjs gives this harness; its frames are left out of the code's tracebacks.
HARNESS_FILENAME = "<mcp-guard-harness>"

_user_namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
_allowed: frozenset[str] = frozenset()
_original_import = builtins.__import__


class _BridgeBlocker:
    """First finder on sys.meta_path: rejects the JavaScript bridge modules, for any importer."""

    @classmethod
    def find_spec(
        cls, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] in BRIDGE_MODULES:
            raise ImportError(f"the module {name!r} is not available in this sandbox", name=name)
        return None


def install_guard(allowed_csv: str) -> None:
    """Cut Python off from JavaScript and restrict the code's imports to `allowed_csv` (comma-separated)."""
    global _allowed
    _allowed = (frozenset(name for name in allowed_csv.split(",") if name) | ALWAYS_ALLOWED) - BRIDGE_MODULES
    for name in list(sys.modules):
        if name.partition(".")[0] in BRIDGE_MODULES:
            del sys.modules[name]
    kept = [finder for finder in sys.meta_path if not _is_pyodide_finder(finder)]
    sys.meta_path[:] = [_BridgeBlocker, *kept]
    # Node's permission model rejects the child process that Emscripten's system() starts, but its
    # JavaScript error breaks the interpreter. No process can start, so system() fails in Python.
    import os
    import posix

    posix.system = _no_processes
    os.system = _no_processes
    builtins.__import__ = _guarded_import


def _no_processes(command: object) -> int:
    raise OSError("the sandbox cannot start processes")


def _is_pyodide_finder(finder: object) -> bool:
    module = getattr(type(finder), "__module__", "") or ""
    if isinstance(finder, type):
        module = finder.__module__ or ""
    return module.partition(".")[0] in BRIDGE_MODULES


def _guarded_import(
    name: str,
    globals: Any = None,
    locals: Any = None,
    fromlist: Any = (),
    level: int = 0,
) -> ModuleType:
    top = name.partition(".")[0]
    if level == 0 and top in BRIDGE_MODULES:
        raise ImportError(f"the module {top!r} is not available in this sandbox", name=top)
    if (
        level == 0
        and top not in _allowed
        and not _imported_by_module(globals)
        and not _private_c_import(top, fromlist)
    ):
        allowed = ", ".join(sorted(_allowed)) or "none"
        raise ImportError(
            f"importing {top!r} is not allowed in this sandbox (allowed modules: {allowed})", name=top
        )
    return _original_import(name, globals, locals, fromlist, level)


def _private_c_import(top: str, fromlist: object) -> bool:
    # Functions written in C import private helpers through PyImport_Import, which passes the
    # caller's globals and an empty list; datetime.strptime importing _strptime is one. An import
    # statement passes None or a tuple, so the code's own `import _x` is still checked.
    return top.startswith("_") and isinstance(fromlist, list) and not fromlist


def _imported_by_module(importer_globals: object) -> bool:
    """Tell whether the import comes from a loaded module (a dependency) rather than from the code."""
    if not isinstance(importer_globals, dict):
        return False
    name = importer_globals.get("__name__")
    if not isinstance(name, str) or name == "__main__":
        return False
    module = sys.modules.get(name)
    return module is not None and getattr(module, "__dict__", None) is importer_globals


def run_code(source: str) -> str:
    """Run `source` in the kept namespace and return the JSON report."""
    report: dict[str, Any] = {"results": [], "error": None, "exit_status": 0}
    try:
        tree = ast.parse(source, CODE_FILENAME, "exec")
        last = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = ast.Expression(final.value)
        exec(compile(tree, CODE_FILENAME, "exec"), _user_namespace)
        if last is not None:
            value = eval(compile(last, CODE_FILENAME, "eval"), _user_namespace)
            report["results"] = _describe(value)
    except SystemExit as exc:
        # The status a Python process would exit with after sys.exit(code).
        code = exc.code
        if code is None:
            report["exit_status"] = 0
        elif isinstance(code, int):
            report["exit_status"] = code % 256
        else:
            report["exit_status"] = 1
        if code not in (None, 0):
            report["error"] = {"name": "SystemExit", "value": str(code), "traceback": ""}
    except BaseException as exc:  # the code's own error is its result
        report["exit_status"] = 1
        report["error"] = _describe_error(exc)
    finally:
        _flush()
    return json.dumps(report)


def _describe(value: object) -> list[dict[str, str]]:
    if value is None:
        return []
    try:
        text = repr(value)
    except BaseException as exc:
        text = f"<repr failed: {type(exc).__name__}>"
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + " ...[cut]"
    return [{"kind": "text", "data": text}]


def _describe_error(exc: BaseException) -> dict[str, str]:
    try:
        value = str(exc)
    except BaseException:
        value = "<str failed>"
    return {
        "name": type(exc).__name__,
        "value": value[:MAX_ERROR_CHARS],
        "traceback": _user_traceback(exc)[-MAX_TRACEBACK_CHARS:],
    }


def _user_traceback(exc: BaseException) -> str:
    # Frames before the first one in the code belong to this harness; the user does not need them.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != CODE_FILENAME:
        tb = tb.tb_next
    try:
        report = traceback.TracebackException(type(exc), exc, tb)
        frames = [frame for frame in report.stack if frame.filename != HARNESS_FILENAME]
        report.stack = traceback.StackSummary.from_list(frames)
        return "".join(report.format())
    except BaseException:
        return ""


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
