"""The files beside the audit database: the HMAC key, the chain head and the writer lock.

All of them, like the database, are readable and writable by the owner only
(mode 0600). These are blocking helpers; the store calls them from a worker thread.
They raise `OSError` and `ValueError`, which the store translates.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog

from mcp_guard.audit.chain import ChainLink
from mcp_guard.errors import ConfigError

OWNER_ONLY = 0o600
STATE_DIR_MODE = 0o700
KEY_BYTES = 32
# Shorter keys are rejected: HMAC-SHA256 needs 128 bits or more to resist guessing.
MIN_KEY_BYTES = 16
DEFAULT_KEY_ENV_VAR = "MCP_GUARD_AUDIT_KEY"

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AuditPaths:
    """Paths of the audit files inside a state directory."""

    database: Path
    key: Path
    head: Path

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> AuditPaths:
        """Return the standard file names inside `state_dir`."""
        return cls(state_dir / "audit.sqlite3", state_dir / "audit.key", state_dir / "audit.head")


def lock_path(database: Path) -> Path:
    """Return the lock file that marks the one process writing `database`."""
    return database.with_name(database.name + ".lock")


def load_audit_key(
    key_path: Path, env_var: str | None = DEFAULT_KEY_ENV_VAR, *, create: bool = True
) -> bytes:
    """Return the HMAC key from the environment variable, else from the key file.

    The variable contains the key as hex. Without it, the key file is read, or created
    with 32 random bytes (as hex, mode 0600) when `create` is true.

    Raises:
        ConfigError: The variable is set but is not hex, or is too short.
        FileNotFoundError: There is no key file and `create` is false.
        ValueError: The key file does not hold a valid key.
        OSError: The key file cannot be read or created.
    """
    if env_var and (text := os.environ.get(env_var)):
        try:
            return _parse_key(text)
        except ValueError as exc:
            # The message never repeats the value, which is a secret.
            raise ConfigError(f"${env_var}", [f"{env_var}: {exc}"]) from None
    if create and not key_path.exists():
        _create_key_file(key_path)
    text = key_path.read_text(encoding="ascii")
    try:
        return _parse_key(text)
    except ValueError as exc:
        raise ValueError(f"invalid audit key in {key_path}: {exc}") from None


def _parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("the key must be hexadecimal") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key must be at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex digits)")
    return key


def _create_key_file(key_path: Path) -> None:
    ensure_state_dir(key_path.parent)
    try:
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        return  # Another process created it first; use theirs.
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(KEY_BYTES) + "\n")
        file.flush()
        os.fsync(file.fileno())
    logger.info("audit_key_created", path=str(key_path))


def ensure_state_dir(directory: Path) -> None:
    """Create the state directory (mode 0700) if it does not exist."""
    directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)


def create_owner_only(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists, so no other user can ever open it."""
    # Opened read-only, so an existing file without write permission passes here. The
    # store then reports the database as read-only, which is clearer than "permission denied".
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, OWNER_ONLY)
    os.close(descriptor)


def restrict_to_owner(*paths: Path) -> None:
    """Set mode 0600 on each existing path; SQLite creates its -wal and -shm files later."""
    for path in paths:
        try:
            os.chmod(path, OWNER_ONLY)
        except FileNotFoundError:
            continue


def read_head(head_path: Path) -> ChainLink | None:
    """Return the newest (row id, hash) from the head file, or None if it does not exist.

    Raises:
        ValueError: The file exists but does not hold a head.
    """
    try:
        text = head_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return ChainLink(int(data["row_id"]), str(data["hash"]))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"invalid head file {head_path}: expected {{'row_id': ..., 'hash': ...}}") from None


def write_head(head_path: Path, head: ChainLink, fsync: bool = True) -> None:
    """Replace the head file atomically: write a temporary file, fsync it, rename it over.

    With `fsync` false the file is renamed without being flushed to disk: a crash of the
    process still leaves the whole new file (the page cache survives it), a power cut may not.

    The directory is not fsynced. After a power cut the rename may be lost, leaving
    the previous head, which verification accepts (rows past the head still chain).
    The fsync before the rename is what matters: without it the new file could be
    empty after a crash.
    """
    temporary = head_path.with_name(head_path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump({"row_id": head.row_id, "hash": head.hash}, file)
        file.flush()
        if fsync:
            os.fsync(file.fileno())
    os.replace(temporary, head_path)


class WriterLock:
    """An exclusive `flock` on the lock file, held while a store writes the database.

    One writer per database keeps the chain and the head file in step. Readers (the
    CLI's search, show and verify) do not take it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._descriptor is not None

    def acquire(self) -> bool:
        """Take the lock without waiting; return False if another process holds it."""
        if self._descriptor is not None:
            return True
        # flock needs no write access, so a read-only lock file still works.
        descriptor = os.open(self.path, os.O_RDONLY | os.O_CREAT, OWNER_ONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        """Release the lock if held."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
