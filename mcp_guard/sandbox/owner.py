"""Which gateway process a sandbox belongs to, so start-up removes only true orphans.

Backends that leave sandboxes outside the gateway's process tree (Docker
containers, E2B sandboxes) tag each one with an owner string:
`<host>/<pid>/<random token>`. At start-up a sandbox is an orphan when its owner
names this host and a process that is gone, or this process's PID with another
token (an earlier gateway that had the same PID). Sandboxes of gateways that are
still running, or on other hosts, are left alone: several gateways (one per
client application, say) may share a Docker host or an E2B team.
"""

from __future__ import annotations

import os
import secrets
import socket


def new_owner() -> str:
    """Return the owner string for the sandboxes this process creates."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(8)}"


def is_orphan(owner: str, mine: str) -> bool:
    """Return whether a sandbox tagged `owner` was left by a gateway process that has ended."""
    host, _, rest = owner.partition("/")
    pid_text, _, _ = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner != mine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        # The PID belongs to a process of another user: alive, and not an earlier gateway of ours.
        return False
    return False
