"""The HMAC hash chain that makes edits to the audit trail detectable.

Each stored row carries `row_hash = HMAC-SHA256(key, prev_hash || "\\n" || canonical
JSON of its fields)`, where `prev_hash` is the previous row's hash. The row id is
one of the fields, so changing, deleting or reordering rows breaks the chain for
anyone holding the key, and without the key no one can compute a valid hash.

Two values outside the rows close the ends. The anchor is the id and hash of the
last row removed by pruning (genesis before any pruning), kept in the database
with its own HMAC. The head is the id and hash of the newest row, kept in a file
outside the database. This module computes and checks hashes; it does no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mcp_guard.errors import AuditCorrupted

GENESIS_HASH = "0" * 64
# Domain separation: an anchor MAC can never be mistaken for a row hash.
_ANCHOR_CONTEXT = b"mcp-guard audit anchor\n"


def canonical_json(fields: Mapping[str, object]) -> bytes:
    """Encode fields as sorted, compact UTF-8 JSON, the exact bytes that are hashed."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def row_hash(key: bytes, prev_hash: str, fields: Mapping[str, object]) -> str:
    """Return the hex HMAC-SHA256 of a row chained after `prev_hash`."""
    message = prev_hash.encode("ascii") + b"\n" + canonical_json(fields)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A position in the chain: a row id and that row's hash."""

    row_id: int
    hash: str


GENESIS = ChainLink(0, GENESIS_HASH)


def anchor_mac(key: bytes, anchor: ChainLink) -> str:
    """Return the HMAC that protects the stored anchor from being rewritten."""
    message = _ANCHOR_CONTEXT + canonical_json({"row_id": anchor.row_id, "hash": anchor.hash})
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainIntact:
    """Every row verified, and both ends match the anchor and the head."""

    status: Literal["intact"]
    rows_checked: int
    first_row_id: int | None
    last_row_id: int | None


@dataclass(frozen=True, slots=True)
class ChainBroken:
    """Verification failed.

    Attributes:
        row_id: The first row that fails, or None when the problem is at an end of the
            trail (the anchor or the head).
        detail: What does not match, in a sentence without row contents.
    """

    status: Literal["broken"]
    row_id: int | None
    detail: str
    rows_checked: int


VerifyResult = ChainIntact | ChainBroken


class ChainVerifier:
    """Checks rows fed in id order, then both ends of the chain at `finish`.

    Args:
        key: The HMAC key.
        anchor: The stored anchor, or None if the database has none (never pruned).
        stored_anchor_mac: The MAC stored with the anchor, or None with no anchor.
        head: The newest (row id, hash) from the head file, or None if the file is missing.
        head_source: Where the head came from, for messages (the file path).
    """

    def __init__(
        self,
        key: bytes,
        anchor: ChainLink | None,
        stored_anchor_mac: str | None,
        head: ChainLink | None,
        head_source: str,
    ) -> None:
        self._key = key
        self._head = head
        self._head_source = head_source
        self._last = anchor or GENESIS
        self._rows_checked = 0
        self._first_row_id: int | None = None
        self.broken: ChainBroken | None = None
        if anchor is not None and not _same(stored_anchor_mac, anchor_mac(key, anchor)):
            self.broken = self._fail(
                None,
                "the pruning anchor does not match its MAC: the audit key is not the one that wrote the "
                "trail, or the anchor was edited",
            )
        elif head is not None and head.row_id < self._last.row_id:
            self.broken = self._fail(
                None, f"{head_source} records row {head.row_id}, which is older than the anchor"
            )
        elif head is not None and head.row_id == self._last.row_id and not _same(head.hash, self._last.hash):
            self.broken = self._fail(None, f"the anchor does not match the hash recorded in {head_source}")

    def add(self, row_id: int, fields: Mapping[str, object], prev_hash: str, stored_hash: str) -> bool:
        """Check the next row; return False once the chain is broken (stop feeding rows)."""
        if self.broken is not None:
            return False
        if row_hash(self._key, prev_hash, fields) != stored_hash:
            # When no row matches, a wrong key is the likelier cause.
            detail = (
                "the first row does not match its hash: the audit key is not the one that wrote the "
                "trail, or the row was changed"
                if self._rows_checked == 0
                else "the row does not match its hash: a field was changed, or the key is not the one that wrote it"
            )
            self.broken = self._fail(row_id, detail)
        elif not _same(prev_hash, self._last.hash) or row_id <= self._last.row_id:
            self.broken = self._fail(
                row_id,
                "the row does not follow the previous row, so rows before it were deleted or reordered",
            )
        elif (
            self._head is not None and row_id == self._head.row_id and not _same(stored_hash, self._head.hash)
        ):
            self.broken = self._fail(
                row_id, f"the row does not match the hash recorded in {self._head_source}"
            )
        if self.broken is not None:
            return False
        self._rows_checked += 1
        if self._first_row_id is None:
            self._first_row_id = row_id
        self._last = ChainLink(row_id, stored_hash)
        return True

    def finish(self) -> VerifyResult:
        """Return the result once every row has been fed.

        Rows newer than the head are accepted: a crash between a commit and the head
        update leaves the head one batch behind, and those rows are still chained.
        """
        if self.broken is not None:
            return self.broken
        if self._head is None and self._last.row_id != GENESIS.row_id:
            return self._fail(
                None, f"the head file {self._head_source} is missing, so deleted newest rows would go unseen"
            )
        if self._head is not None and self._head.row_id > self._last.row_id:
            return self._fail(
                None,
                f"rows after {self._last.row_id} are missing: "
                f"{self._head_source} records row {self._head.row_id}",
            )
        last_row_id = self._last.row_id if self._first_row_id is not None else None
        return ChainIntact("intact", self._rows_checked, self._first_row_id, last_row_id)

    def _fail(self, row_id: int | None, detail: str) -> ChainBroken:
        return ChainBroken("broken", row_id, detail, self._rows_checked)


def _same(left: str | None, right: str) -> bool:
    return left is not None and hmac.compare_digest(left, right)


@dataclass(frozen=True, slots=True)
class TailState:
    """The newest end of the chain, as a writer reads it at start-up to check it.

    Attributes:
        tail: The newest row's link (else the anchor, else genesis).
        tail_row: The newest row's hashed fields, prev_hash and row_hash; None without rows.
        anchor: The pruning anchor, if any.
        head: The link recorded in the head file; None if the file is missing.
        head_row_hash: The stored hash of the row the head names, if that row exists.
    """

    tail: ChainLink
    tail_row: tuple[Mapping[str, object], str, str] | None
    anchor: ChainLink | None
    head: ChainLink | None
    head_row_hash: str | None


def check_tail(key: bytes, state: TailState, head_source: str) -> None:
    """Raise `AuditCorrupted` unless the newest row matches its hash and the head file.

    This is the cheap start-up check: it reads one or two rows, not the whole chain.
    Appending to a truncated trail would overwrite the head file and erase the
    evidence, so a writer must refuse to start when this fails.
    """
    if state.tail_row is not None:
        fields, prev_hash, stored_hash = state.tail_row
        if row_hash(key, prev_hash, fields) != stored_hash:
            raise AuditCorrupted(
                state.tail.row_id,
                "the newest row does not match its hash: the audit key is not the one that wrote "
                "the trail, or the row was changed",
            )
    head = state.head
    if head is None:
        if state.tail != GENESIS:
            raise AuditCorrupted(
                None, f"the head file {head_source} is missing, so deleted rows would go unseen"
            )
        return
    if head.row_id > state.tail.row_id:
        raise AuditCorrupted(
            None, f"rows after {state.tail.row_id} are missing: {head_source} records row {head.row_id}"
        )
    known = {GENESIS.row_id: GENESIS.hash}
    if state.anchor is not None:
        known[state.anchor.row_id] = state.anchor.hash
    if state.head_row_hash is not None:
        known[head.row_id] = state.head_row_hash
    if not _same(known.get(head.row_id), head.hash):
        raise AuditCorrupted(head.row_id, f"the row does not match the hash recorded in {head_source}")
