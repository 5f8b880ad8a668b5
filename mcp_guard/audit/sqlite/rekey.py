"""Replacing the audit key: every row of the trail is signed again with the new key.

A key that was seen by someone else (committed to git, shown in a log) lets them
write rows that verify. Replacing it first checks the whole chain with the old
key, so that no row changed before the replacement is signed again as genuine.
Then every row hash and the pruning anchor's MAC are computed again with the new
key, in one transaction, and the head file is written.

The key itself lives outside the database (a file, or a variable set from a
secret store), so the database and the key cannot change together. The caller
keeps the new key where a second run finds it (`audit.key.next`) until the key
is in place. A second run after a crash then finishes the work: it finds the
rows already signed with the new key and only writes the head file again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mcp_guard.audit import files, schema
from mcp_guard.audit.chain import GENESIS, ChainBroken, ChainLink, ChainVerifier, anchor_mac, row_hash
from mcp_guard.audit.sqlite import _operations as operations
from mcp_guard.audit.sqlite._operations import translate_errors
from mcp_guard.errors import AuditCorrupted, AuditUnavailable

# Rows read and updated at a time, so a long trail is never held in memory at once.
PAGE_ROWS = 5000
# Milliseconds a transaction waits for SQLite's lock held by another connection (a reader).
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class RekeyResult:
    """The outcome of `rekey_trail`.

    Attributes:
        rows: The rows now signed with the new key.
        already_done: An earlier run had signed them; this one only wrote the head file.
    """

    rows: int
    already_done: bool


def rekey_trail(paths: files.AuditPaths, old_key: bytes, new_key: bytes) -> RekeyResult:
    """Sign every row of the trail again with `new_key`, after checking the chain with `old_key`.

    Raises:
        AuditUnavailable: Another process (a running gateway) writes the trail, or the files
            cannot be read or written.
        AuditCorrupted: The chain does not verify with the old key, nor (after an interrupted
            run) with the new one. Nothing was changed.
    """
    if old_key == new_key:
        raise ValueError("the new audit key is the same as the old one")
    lock = files.WriterLock(files.lock_path(paths.database))
    if not lock.acquire():
        holder = lock.holder()
        process = "another process" if holder is None else f"another process (PID {holder})"
        raise AuditUnavailable(
            f"{process} is writing {paths.database}, lock file {lock.path}",
            fix="Stop the gateway that uses this state directory, then replace the key.",
        )
    try:
        try:
            head = files.read_head(paths.head)
        except ValueError as exc:
            raise AuditCorrupted(None, str(exc)) from None
        with translate_errors(paths.database):
            db = sqlite3.connect(paths.database, isolation_level=None)
        try:
            with translate_errors(paths.database):
                # The commit waits for the disk: the old key is replaced only after it, and a power
                # cut must not leave the new key with rows that the old one signed.
                operations.configure_writer(db, BUSY_TIMEOUT_MS, power_safe=True)
                with operations.transaction(db):
                    result, tail = _sign_again(db, old_key, new_key, head, str(paths.head))
            files.write_head(paths.head, tail)
        finally:
            operations.close_quietly(db)
    finally:
        lock.release()
    return result


def _sign_again(
    db: sqlite3.Connection, old_key: bytes, new_key: bytes, head: ChainLink | None, head_source: str
) -> tuple[RekeyResult, ChainLink]:
    anchor, mac = operations.read_anchor(db)
    signed_with_old = ChainVerifier(old_key, anchor, mac, head, head_source)

    first = _page(db, GENESIS.row_id)
    if first:
        already_signed = not _signed_by(old_key, first[0]) and _signed_by(new_key, first[0])
    else:
        already_signed = anchor is not None and mac == anchor_mac(new_key, anchor)
    if already_signed:
        return _check_signed(db, new_key, anchor, mac, head, head_source)

    last = anchor or GENESIS
    rows = 0
    page = first
    while page:
        updates: list[tuple[str, str, int]] = []
        for values in page:
            fields, prev_hash, stored_hash = schema.split_row(values)
            if not signed_with_old.add(fields["id"], fields, prev_hash, stored_hash):
                assert signed_with_old.broken is not None
                raise _not_replaced(signed_with_old.broken)
            new_hash = row_hash(new_key, last.hash, fields)
            updates.append((last.hash, new_hash, fields["id"]))
            last = ChainLink(fields["id"], new_hash)
        db.executemany("UPDATE audit_rows SET prev_hash = ?, row_hash = ? WHERE id = ?", updates)
        rows += len(updates)
        page = _page(db, last.row_id)

    verdict = signed_with_old.finish()
    if isinstance(verdict, ChainBroken):
        raise _not_replaced(verdict)
    if anchor is not None:
        db.execute(
            "UPDATE audit_meta SET value = ? WHERE name = 'anchor_mac'", (anchor_mac(new_key, anchor),)
        )
    return RekeyResult(rows, already_done=False), last


def _check_signed(
    db: sqlite3.Connection,
    key: bytes,
    anchor: ChainLink | None,
    mac: str | None,
    head: ChainLink | None,
    head_source: str,
) -> tuple[RekeyResult, ChainLink]:
    """Check a trail that an interrupted run signed with `key`."""
    if head is not None:
        # The head file may still hold the old key's hash of the row it names.
        row = operations.fetch_row(db, head.row_id)
        if row is not None:
            head = ChainLink(head.row_id, str(row[-1]))
    verifier = ChainVerifier(key, anchor, mac, head, head_source)
    last = anchor or GENESIS
    rows = 0
    page = _page(db, GENESIS.row_id)
    while page:
        for values in page:
            fields, prev_hash, stored_hash = schema.split_row(values)
            if not verifier.add(fields["id"], fields, prev_hash, stored_hash):
                assert verifier.broken is not None
                raise _not_replaced(verifier.broken)
            last = ChainLink(fields["id"], stored_hash)
        rows += len(page)
        page = _page(db, last.row_id)
    verdict = verifier.finish()
    if isinstance(verdict, ChainBroken):
        raise _not_replaced(verdict)
    return RekeyResult(rows, already_done=True), last


def _page(db: sqlite3.Connection, after_row_id: int) -> list[tuple[object, ...]]:
    query = f"{schema.SELECT_ROWS} WHERE id > ? ORDER BY id LIMIT ?"
    return [tuple(row) for row in db.execute(query, (after_row_id, PAGE_ROWS))]


def _signed_by(key: bytes, values: tuple[object, ...]) -> bool:
    fields, prev_hash, stored_hash = schema.split_row(values)
    return row_hash(key, prev_hash, fields) == stored_hash


def _not_replaced(broken: ChainBroken) -> AuditCorrupted:
    return AuditCorrupted(
        broken.row_id,
        f"{broken.detail}; the key was not replaced, because signing the trail again would make "
        "changed rows look genuine",
    )


def key_path_next(key_path: Path) -> Path:
    """Return where the new key waits while the trail is signed again: `audit.key.next`."""
    return key_path.with_name(key_path.name + ".next")
