"""The run_code tool's sandboxes: one backend per module behind `SandboxBackend` (see `base.py`).

`open_backend` picks the backend the policy file names. Each backend module is
imported only when chosen, so a gateway using the local backend never loads the
Docker or E2B libraries.
"""

from __future__ import annotations

from collections.abc import Mapping

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.sandbox.base import SandboxBackend


def open_backend(settings: SandboxSettings, environ: Mapping[str, str]) -> SandboxBackend:
    """Create the backend `settings` choose ("auto" resolved against `environ`). Nothing is started yet."""
    kind = settings.chosen_backend(dict(environ))
    if kind == "local":
        from mcp_guard.sandbox.local import LocalBackend

        return LocalBackend(settings, environ)
    if kind == "docker":
        from mcp_guard.sandbox.docker import DockerBackend

        return DockerBackend(settings, environ)
    if kind == "wasm":
        from mcp_guard.sandbox.wasm import WasmBackend

        return WasmBackend(settings, environ)
    from mcp_guard.sandbox.e2b import E2BBackend

    return E2BBackend(settings, environ)
