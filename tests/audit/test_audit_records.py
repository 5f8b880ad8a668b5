"""Call records: time format, validation, and the redacted copies stores keep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from mcp_guard.audit import CallIntent, CallOutcome, Redactor, new_call_id, utc_now
from mcp_guard.audit.records import ARGUMENTS_MAX_CHARS, PREVIEW_MAX_CHARS
from mcp_guard.audit.redaction import NAME_CACHE_SIZE

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]


def test_times_are_stored_as_utc_with_microseconds(make_intent: IntentFactory) -> None:
    paris = timezone(timedelta(hours=2))

    intent = make_intent(time=datetime(2025, 11, 25, 11, 30, tzinfo=paris))

    assert intent.time == "2025-11-25T09:30:00.000000+00:00"


def test_utc_now_sorts_as_text() -> None:
    earlier = utc_now()
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="microseconds")

    assert earlier < later
    assert len(earlier) == len("2025-11-25T09:30:00.000000+00:00")


def test_time_without_offset_is_rejected(make_intent: IntentFactory) -> None:
    with pytest.raises(ValidationError, match="has no UTC offset"):
        make_intent(time="2025-11-25T09:30:00")


def test_unknown_decision_is_rejected(make_intent: IntentFactory) -> None:
    with pytest.raises(ValidationError):
        make_intent(decision="maybe")


def test_non_finite_latency_is_rejected(make_outcome: OutcomeFactory) -> None:
    with pytest.raises(ValidationError, match="finite"):
        make_outcome("call", latency_ms=float("inf"))


def test_call_ids_are_unique_hex() -> None:
    first, second = new_call_id(), new_call_id()

    assert first != second
    assert len(first) == 32
    assert int(first, 16) >= 0


@pytest.mark.attack("secret in audit trail or logs")
def test_preview_is_redacted_before_it_is_cut(make_outcome: OutcomeFactory) -> None:
    token = "ghp_" + "p" * 36
    outcome = make_outcome("call", preview="x" * (PREVIEW_MAX_CHARS - 10) + token)

    stored = outcome.redacted(Redactor())

    assert len(stored.preview) == PREVIEW_MAX_CHARS
    assert stored.preview.endswith("…[truncated]")
    assert "ghp_" not in stored.preview


def test_huge_arguments_are_stored_as_a_head(make_intent: IntentFactory) -> None:
    intent = make_intent(arguments={"content": "y" * ARGUMENTS_MAX_CHARS})

    stored = intent.redacted(Redactor())

    assert isinstance(stored.arguments, dict)
    assert stored.arguments["truncated"] is True
    assert len(str(stored.arguments["head"])) < 20_000


@pytest.mark.attack("secret in audit trail or logs", attempts=2)
def test_intent_text_fields_are_redacted(make_intent: IntentFactory) -> None:
    intent = make_intent(session="Bearer abcdefghij", arguments={"password": "x"})

    stored = intent.redacted(Redactor())

    assert stored.session == "Bearer [REDACTED:authorization-header]"
    assert stored.arguments == {"password": "[REDACTED:secret-field]"}
    assert intent.arguments == {"password": "x"}


@pytest.mark.attack("secret in audit trail or logs", attempts=2)
def test_redacted_names_stay_masked_when_remembered(make_intent: IntentFactory) -> None:
    token = "ghp_" + "k7" * 18
    redactor = Redactor()
    intent = make_intent(client=f"bot-{token}", tool=token, rule=f"rule {token}")

    # Names are remembered after the first call: the second copy must come out the same.
    first, second = intent.redacted(redactor), intent.redacted(redactor)

    for stored in (first, second):
        assert stored.client == "bot-[REDACTED:github-token]"
        assert stored.tool == "[REDACTED:github-token]"
        assert stored.rule == "rule [REDACTED:github-token]"


def test_remembered_names_stay_bounded() -> None:
    redactor = Redactor()

    masked = [redactor.redact_name(f"tool-{index}") for index in range(NAME_CACHE_SIZE * 3)]

    assert masked[-1] == f"tool-{NAME_CACHE_SIZE * 3 - 1}"
    assert len(redactor._names) <= NAME_CACHE_SIZE
