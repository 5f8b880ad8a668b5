"""The command that starts this mcp-guard, for generated configuration and for hints in messages.

A hint of the form `mcp-guard ...` fails to paste when the script is not on the user's
PATH, as after `make install` into a virtualenv, so hints name the absolute command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def launcher() -> list[str]:
    """Return the absolute command that starts this mcp-guard: its script, or `python -m mcp_guard`."""
    scripts = Path(sys.executable).absolute().parent
    for name in ("mcp-guard", "mcp-guard.exe"):
        script = scripts / name
        if script.is_file():
            return [str(script)]
    return [str(Path(sys.executable).absolute()), "-m", "mcp_guard"]


def command_line(*args: str) -> str:
    """Return a shell command line that runs this mcp-guard with `args`, quoted for pasting."""
    return shlex.join([*launcher(), *args])


def policy_command_line(command: str, policy_path: str | None) -> str:
    """Return `command_line(command, "--config", POLICY)` with the policy's absolute path, or without one."""
    if policy_path is None:
        return command_line(command)
    return command_line(command, "--config", str(Path(policy_path).resolve()))
