"""The files beside the audit database: the HMAC key, the chain head and the writer lock.

All of them, like the database, are readable and writable by the owner only
(mode 0600). These are blocking helpers; the store calls them from a worker thread.
They raise `OSError` and `ValueError`, which the store translates.
"""

from __future__ import annotations

import contextlib
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
# Bytes of the head file: a JSON record of the largest row id and a SHA-256 hash, padded
# with spaces. Reads that overlap an update are repeated up to this many times.
HEAD_RECORD_BYTES = 160
HEAD_READ_ATTEMPTS = 5

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
            return parse_key(text)
        except ValueError as exc:
            # The message never repeats the value, which is a secret.
            raise ConfigError(f"${env_var}", [f"{env_var}: {exc}"]) from None
    if create and not key_path.exists():
        _create_key_file(key_path)
    text = key_path.read_text(encoding="ascii")
    try:
        return parse_key(text)
    except ValueError as exc:
        raise ValueError(f"invalid audit key in {key_path}: {exc}") from None


def parse_key(text: str) -> bytes:
    """Return the key written as hex in `text`.

    Raises:
        ValueError: `text` is not hex, or the key is shorter than `MIN_KEY_BYTES`.
    """
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

    The gateway updates the file in place (`HeadWriter`), so a read that overlaps an update
    could see half of each. The file is read until two reads in a row agree.

    Raises:
        ValueError: The file exists but does not hold a head.
    """
    previous: str | None = None
    for _ in range(HEAD_READ_ATTEMPTS):
        try:
            text = head_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if text == previous:
            break
        previous = text
    try:
        data = json.loads(text)
        return ChainLink(int(data["row_id"]), str(data["hash"]))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"invalid head file {head_path}: expected {{'row_id': ..., 'hash': ...}}") from None


def write_head(head_path: Path, head: ChainLink, fsync: bool = True) -> None:
    """Replace the head file atomically: write a temporary file, fsync it, rename it over.

    `HeadWriter` uses this only to create the file, so that no crash can leave an empty head
    file behind. With `fsync` false the file is renamed without being flushed to disk: a
    crash of the process still leaves the whole new file (the page cache survives it), a
    power cut may not.
    """
    temporary = head_path.with_name(head_path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    with os.fdopen(descriptor, "wb") as file:
        file.write(_head_record(head))
        file.flush()
        if fsync:
            os.fsync(file.fileno())
    os.replace(temporary, head_path)


class HeadWriter:
    """Keeps the head file open while the store writes, and updates it in place.

    The first update creates the file with `write_head`. Later ones overwrite its one
    fixed-size record with a single `pwrite`. A write that small, within one page, leaves
    the whole old or the whole new record after any crash of the process. With `fsync`
    the record is also flushed to disk. Renaming a new file over the head on every batch
    took more time than the SQLite commit in a profile on ext4, which starts writing a
    file renamed over another to disk at once (its `auto_da_alloc` rule).

    Args:
        path: The head file.
        fsync: Flush each update to disk, to survive a power cut.
    """

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._descriptor: int | None = None
        self._truncate = False

    def write(self, head: ChainLink) -> None:
        """Record `head` as the newest row.

        Raises:
            OSError: The file cannot be created, opened or written.
        """
        if self._descriptor is None:
            if not self.path.exists():
                write_head(self.path, head, self._fsync)
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            # A head written by an older version may be longer; the record must end the file.
            self._truncate = os.fstat(self._descriptor).st_size != HEAD_RECORD_BYTES
        record = _head_record(head)
        if os.pwrite(self._descriptor, record, 0) != len(record):
            raise OSError(f"short write to {self.path}")
        if self._truncate:
            os.ftruncate(self._descriptor, len(record))
            self._truncate = False
        if self._fsync:
            os.fdatasync(self._descriptor)

    def close(self) -> None:
        """Close the file; the next `write` opens it again."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _head_record(head: ChainLink) -> bytes:
    text = json.dumps({"row_id": head.row_id, "hash": head.hash})
    # Padded to one length, so every update overwrites the whole previous record.
    return text.ljust(HEAD_RECORD_BYTES - 1).encode("utf-8") + b"\n"


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
        """Take the lock without waiting; return False if another process holds it.

        The holder writes its process id into the file, so that `holder` can name it.
        """
        if self._descriptor is not None:
            return True
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, OWNER_ONLY)
            writable = True
        except PermissionError:
            # flock needs no write access, so a read-only lock file still works.
            descriptor = os.open(self.path, os.O_RDONLY | os.O_CREAT, OWNER_ONLY)
            writable = False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        if writable:
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        self._descriptor = descriptor
        return True

    def holder(self) -> int | None:
        """Return the process id the lock's holder wrote into the file, or None if unknown."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Release the lock if held."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
