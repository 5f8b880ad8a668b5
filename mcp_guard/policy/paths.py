"""The `path_under` check: does a file path resolve into one of the allowed folders?

This is the one place where the policy engine reads the filesystem. It reads it
through a `PathResolver` (by default `os.path.realpath`), so symlinks that exist
at decision time are followed exactly as the server would follow them.

The value is taken as the literal path the server receives. It is never
percent-decoded, and the check rejects what a server might decode or expand
into a different path instead: percent-encoded '.', '/', '\\', '%' and NUL,
backslashes and a leading '~'. The filesystem is assumed to be POSIX.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence

PathResolver = Callable[[str], str]
"""Turns an absolute path into its canonical form, following symlinks (`os.path.realpath`)."""

# PATH_MAX on Linux, in bytes including the terminating NUL. A value with more characters
# cannot be a path the kernel accepts, and is rejected before the filesystem is touched.
MAX_PATH_CHARS = 4096
# A server that percent-decodes a path once turns %2e into '.', and %252e through %2e into
# '.' if it decodes twice. Rejecting the encodings of '.', '/', '\', '%' and NUL covers both.
ENCODED_PATH_SYNTAX = re.compile(r"%(2e|2f|5c|25|00)", re.IGNORECASE)
# Maximum length of a resolved path as shown in a violation, in characters.
MAX_SHOWN_PATH_CHARS = 120


def default_resolver(path: str) -> str:
    """Return the canonical form of `path`: `..` removed and existing symlinks followed.

    Components that do not exist are kept as written, after `..` is applied lexically.
    """
    return os.path.realpath(path, strict=False)


def check_path_under(value: str, roots: Sequence[str], base: str | None, resolve: PathResolver) -> str | None:
    """Return why `value` does not resolve into one of `roots`, or None when it does.

    Args:
        value: The path as sent in the arguments.
        roots: Absolute folders; each is resolved with `resolve` as well, so a root that is itself
            a symlink is compared by its target.
        base: Absolute folder that a relative `value` is joined to; None rejects relative paths.
        resolve: Turns an absolute path into its canonical form, following symlinks.

    Returns:
        A phrase that completes "arguments.x ('value') ...", or None when the path is allowed.

    NOTE: the filesystem can change between this check and the server's use of the path. A
    symlink created inside a root after the decision is not caught.
    """
    problem = _syntax_problem(value, base)
    if problem is not None:
        return problem

    absolute = value if value.startswith("/") else os.path.join(base or "/", value)
    try:
        resolved = resolve(absolute)
        resolved_roots = [resolve(root) for root in roots]
    except (OSError, ValueError) as exc:
        # UnicodeEncodeError (a lone surrogate) is a ValueError: no file can have that name.
        return f"cannot be resolved as a file path ({type(exc).__name__}); send a valid path"

    if any(_is_within(resolved, root) for root in resolved_roots):
        return None
    allowed = ", ".join(json.dumps(root) for root in roots)
    # The resolved path is not shown: it would tell the caller where symlinks point on this host.
    return f"is outside the allowed folders ({allowed}) once links and '..' are resolved"


def joined_path(value: str, base: str) -> str:
    """Return `value` joined to `base` when it is a relative path the check accepts, else `value` as sent.

    This is the path `check_path_under` checks for a relative value, so a caller that forwards it
    in place of `value` sends the server the path that was checked.
    """
    if value.startswith("/") or _syntax_problem(value, base) is not None:
        return value
    return os.path.join(base, value)


def _syntax_problem(value: str, base: str | None) -> str | None:
    if len(value) > MAX_PATH_CHARS:
        return f"is {len(value):,} characters long, longer than any file path can be ({MAX_PATH_CHARS:,})"
    if "\0" in value:
        return "contains a NUL character, which no file path can contain"
    encoded = ENCODED_PATH_SYNTAX.search(value)
    if encoded is not None:
        return (
            f"contains the percent-encoded sequence {json.dumps(encoded.group())}, which a server that decodes paths "
            "would read as path syntax; send the path without percent-encoding"
        )
    if "\\" in value:
        return "contains a backslash, which some servers treat as a path separator"
    if value.startswith("~"):
        return 'starts with "~", which some servers expand to a home folder; send an absolute path'
    if not value.startswith("/"):
        if base is None:
            return (
                "is a relative path, but only absolute paths are allowed here; send an absolute path "
                "(a policy can allow relative ones with path_base)"
            )
        if ":" in value.split("/", 1)[0]:
            return "starts like a URL or a drive letter; send a path"
    return None


def _is_within(path: str, root: str) -> bool:
    # Compare whole components: "/data/allowed_evil" is not inside "/data/allowed".
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root.rstrip("/") + "/")


def _shorten(path: str) -> str:
    if len(path) <= MAX_SHOWN_PATH_CHARS:
        return json.dumps(path)
    return json.dumps(path[:MAX_SHOWN_PATH_CHARS] + "...")
