"""Tests of `plan_change`, the trust-on-first-use rule, as a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mcp_guard.pinning.records import (
    APPROVED_BY_POLICY,
    APPROVED_ON_FIRST_USE,
    PinChange,
    PinRecord,
    plan_change,
)

SEEN = datetime(2026, 1, 1, tzinfo=UTC)
OLD, NEW, OTHER = "sha256:old", "sha256:new", "sha256:other"


def _record(approved: str | None = OLD, pending: str | None = None, *, rejected: bool = False) -> PinRecord:
    return PinRecord(
        server="files",
        tool="read_file",
        first_seen=SEEN,
        approved_hash=approved,
        approved_definition=None if approved is None else {"name": "read_file"},
        pending_hash=pending,
        pending_definition=None if pending is None else {"name": "read_file"},
        pending_since=None if pending is None else SEEN,
        rejected_at=SEEN if rejected else None,
    )


@pytest.mark.parametrize(
    "record, digest, first_sight, allow, flagged, expected",
    [
        pytest.param(
            None,
            NEW,
            True,
            False,
            False,
            PinChange("approved", "approve", APPROVED_ON_FIRST_USE),
            id="first-sight",
        ),
        pytest.param(None, NEW, True, False, True, PinChange("new", "hold"), id="first-sight-flagged"),
        pytest.param(None, NEW, False, False, False, PinChange("new", "hold"), id="new-tool"),
        pytest.param(
            None,
            NEW,
            False,
            True,
            False,
            PinChange("approved", "approve", APPROVED_BY_POLICY),
            id="new-tool-allowed",
        ),
        pytest.param(None, NEW, False, True, True, PinChange("new", "hold"), id="new-tool-allowed-flagged"),
        pytest.param(
            _record(None, NEW), NEW, False, False, False, PinChange("new", "none"), id="new-still-pending"
        ),
        pytest.param(
            _record(None, NEW), OTHER, False, False, False, PinChange("new", "hold"), id="new-changed-again"
        ),
        pytest.param(
            _record(None, NEW),
            NEW,
            False,
            True,
            False,
            PinChange("approved", "approve", APPROVED_BY_POLICY),
            id="new-then-allowed",
        ),
        pytest.param(
            _record(None, NEW, rejected=True),
            NEW,
            False,
            False,
            False,
            PinChange("new", "none"),
            id="new-rejected",
        ),
        pytest.param(_record(), OLD, False, False, False, PinChange("approved", "none"), id="unchanged"),
        pytest.param(_record(), NEW, False, False, False, PinChange("changed", "hold"), id="changed"),
        pytest.param(
            _record(), NEW, False, True, False, PinChange("changed", "hold"), id="changed-allow-new-tools"
        ),
        pytest.param(
            _record(OLD, NEW),
            NEW,
            False,
            False,
            False,
            PinChange("changed", "none"),
            id="change-still-pending",
        ),
        pytest.param(
            _record(OLD, NEW), OTHER, False, False, False, PinChange("changed", "hold"), id="changed-again"
        ),
        pytest.param(
            _record(OLD, NEW),
            OLD,
            False,
            False,
            False,
            PinChange("approved", "drop_pending"),
            id="changed-back",
        ),
        pytest.param(
            _record(OLD, NEW, rejected=True),
            NEW,
            False,
            False,
            False,
            PinChange("changed", "none"),
            id="rejected",
        ),
        pytest.param(
            _record(OLD, NEW, rejected=True),
            OLD,
            False,
            False,
            False,
            PinChange("approved", "drop_pending"),
            id="rejected-then-back",
        ),
    ],
)
def test_plan_change(
    record: PinRecord | None, digest: str, first_sight: bool, allow: bool, flagged: bool, expected: PinChange
) -> None:
    change = plan_change(record, digest, first_sight=first_sight, allow_new_tools=allow, flagged=flagged)

    assert change == expected


@pytest.mark.parametrize(
    "record, state",
    [
        (_record(), "approved"),
        (_record(OLD, NEW), "changed"),
        (_record(None, NEW), "new"),
        (_record(OLD, NEW, rejected=True), "rejected"),
    ],
)
def test_record_state(record: PinRecord, state: str) -> None:
    assert record.state == state
