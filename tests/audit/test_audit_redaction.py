"""The redactor: secret keys, secret-looking values, extra rules, linear time and log events."""

from __future__ import annotations

import re
import time

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.audit import Redactor, patterns, redact_event

REDACTOR = Redactor()


@pytest.mark.parametrize(
    ("text", "secret", "marker"),
    [
        ("id AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "aws-access-key-id"),
        ("temp ASIAABCDEFGHIJKLMNOP", "ASIAABCDEFGHIJKLMNOP", "aws-access-key-id"),
        ("ghp_" + "a1" * 18, "ghp_" + "a1" * 18, "github-token"),
        ("ghs_" + "Z9" * 18, "ghs_" + "Z9" * 18, "github-token"),
        ("github_pat_11AB_" + "c" * 30, "github_pat_11AB_" + "c" * 30, "github-token"),
        ("xoxb-1234-5678-abcdefgh", "xoxb-1234-5678-abcdefgh", "slack-token"),
        ("xoxp-99-secretvalue", "xoxp-99-secretvalue", "slack-token"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1", "eyJzdWIiOiIxIn0", "jwt"),
        ("sk-proj-" + "x" * 30, "sk-proj-" + "x" * 30, "api-key"),
        ("AIza" + "B" * 35, "AIza" + "B" * 35, "google-api-key"),
        ("key sk_live_" + "4" * 24, "sk_live_" + "4" * 24, "stripe-key"),
        ("rk_test_" + "Q" * 16, "rk_test_" + "Q" * 16, "stripe-key"),
        ("Authorization: Bearer abc.def-123", "abc.def-123", "authorization-header"),
        ("authorization: basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "authorization-header"),
        ("postgres://app:hunter2@db:5432/main", "hunter2", "url-password"),
        ("https://u:p@ss:w@rd@host/x", "w@rd", "url-password"),
        ("DB_PASSWORD=hunter2 next", "hunter2", "secret-field"),
        ('{"client_secret": "two words"}', "two words", "secret-field"),
        ('{\\"api_key\\": \\"abc123\\"}', "abc123", "secret-field"),
        ("x-api-key: abcd1234", "abcd1234", "secret-field"),
        ("https://h/?access_token=zzz123&page=2", "zzz123", "secret-field"),
        ("mysql --password hunter2 --user bob", "hunter2", "secret-field"),
        ("config.db.password: p4ss", "p4ss", "secret-field"),
    ],
)
@pytest.mark.attack("secret in audit trail or logs")
def test_secret_in_text_is_masked(text: str, secret: str, marker: str) -> None:
    masked = REDACTOR.redact_text(text)

    assert secret not in masked
    assert f"[REDACTED:{marker}]" in masked


@pytest.mark.attack("secret in audit trail or logs")
def test_private_key_block_is_masked_whole() -> None:
    block = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nMORE\n-----END OPENSSH PRIVATE KEY-----"
    text = f"key:\n{block}\nafter"

    masked = REDACTOR.redact_text(text)

    assert masked == "key:\n[REDACTED:private-key]\nafter"


@pytest.mark.attack("secret in audit trail or logs")
def test_private_key_block_cut_before_end_is_masked() -> None:
    masked = REDACTOR.redact_text("start -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC")

    assert masked == "start [REDACTED:private-key]"


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=100 token_count=5",
        "https://example.com:8080/path?page=2",
        "Basic idea",
        "the session id is 42",
        "ghp_short",
        "no secrets here",
    ],
)
@pytest.mark.legitimate("secret in audit trail or logs")
def test_ordinary_text_is_kept(text: str) -> None:
    assert REDACTOR.redact_text(text) == text


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "newPassword1",
        "passwd",
        "token",
        "access_token",
        "GITHUB_TOKEN",
        "apiKey",
        "api-key",
        "X-API-Key",
        "authorization",
        "Proxy-Authorization",
        "secret",
        "client_secret",
        "privateKey",
        "private_key",
        "cookie",
        "Set-Cookie",
        "credentials",
        "AWS_SECRET_ACCESS_KEY",
        "session_token",
    ],
)
@pytest.mark.attack("secret in audit trail or logs")
def test_secret_key_is_recognised(key: str) -> None:
    assert REDACTOR.is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["session", "session_id", "max_tokens", "token_count", "path", "key", "secret_name", "tokenizer"]
)
@pytest.mark.legitimate("secret in audit trail or logs")
def test_ordinary_key_is_not_secret(key: str) -> None:
    assert not REDACTOR.is_secret_key(key)


@pytest.mark.attack("secret in audit trail or logs")
def test_nested_secret_keys_are_masked() -> None:
    value = {
        "user": "bob",
        "auth": {"user": "bob", "password": "hunter2"},
        "steps": [{"headers": {"Authorization": "Bearer abcdefgh"}}, {"api_key": 12345}],
        "flags": {"token": None, "use_token": True},
    }

    masked = REDACTOR.redact_value(value)

    assert masked == {
        "user": "bob",
        "auth": "[REDACTED:secret-field]",
        "steps": [
            {"headers": {"Authorization": "[REDACTED:secret-field]"}},
            {"api_key": "[REDACTED:secret-field]"},
        ],
        "flags": {"token": None, "use_token": True},
    }


@pytest.mark.attack("secret in audit trail or logs")
def test_secret_in_dictionary_key_is_masked() -> None:
    token = "ghp_" + "k" * 36

    masked = REDACTOR.redact_value({token: 1, "ghp_" + "j" * 36: 2})

    assert masked == {"[REDACTED:github-token]": 1, "[REDACTED:github-token]#2": 2}


@pytest.mark.attack("secret in audit trail or logs")
def test_deep_nesting_is_cut_with_marker() -> None:
    value: object = "ghp_" + "d" * 36
    for _ in range(500):
        value = [value]

    masked = REDACTOR.redact_value(value)  # type: ignore[arg-type]

    assert "ghp_" not in repr(masked)
    assert "[REDACTED:nesting-too-deep]" in repr(masked)


def test_extra_keys_and_patterns_are_applied() -> None:
    redactor = Redactor(
        extra_keys=["pin"], extra_patterns={"employee-id": r"EMP-\d{6}", "ref": r"ref=(?P<secret>\w+)"}
    )

    masked = redactor.redact_value({"card_pin": "1234", "note": "EMP-123456 ref=abc", "spin": 3})

    assert masked == {
        "card_pin": "[REDACTED:secret-field]",
        "note": "[REDACTED:employee-id] ref=[REDACTED:ref]",
        "spin": 3,
    }


@pytest.mark.parametrize(
    ("keys", "patterns", "message"),
    [
        ((), {"bad": "("}, "invalid regex for secret pattern 'bad'"),
        ((), {"empty": "a*"}, "secret pattern 'empty' matches the empty string"),
        ((), {"Bad Name": "x"}, "invalid secret pattern name 'Bad Name'"),
        (("--",), {}, "invalid secret key name '--'"),
    ],
)
def test_invalid_extra_rule_is_rejected(
    keys: tuple[str, ...], patterns: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Redactor(extra_keys=keys, extra_patterns=patterns)


@pytest.mark.parametrize(
    "unit",
    ["a", "a=", "a=b=", 'a="', "eyJ", "eyJa.", "github_pat_", "xoxb-", "://", "://a:", "Bearer ", "--a "],
)
@pytest.mark.attack("oversized or pathological input")
def test_long_hostile_text_is_scanned_in_linear_time(unit: str) -> None:
    # Quadratic behaviour would take minutes at this size; linear scanning takes well
    # under a second on a slow machine.
    text = unit * (400_000 // len(unit))

    started = time.perf_counter()
    REDACTOR.redact_text(text)
    elapsed = time.perf_counter() - started

    assert elapsed < 5


@pytest.mark.attack("secret in audit trail or logs")
def test_secret_past_a_megabyte_is_masked() -> None:
    text = "x " * 600_000 + "ghp_" + "t" * 36

    assert "ghp_" not in REDACTOR.redact_text(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:=/@-_ \"'\nghpxoABeyJ.")), max_size=80))
def test_redaction_is_idempotent(text: str) -> None:
    once = REDACTOR.redact_text(text)

    assert REDACTOR.redact_text(once) == once


def _scan_every_pattern(text: str) -> str:
    """Redact as `Redactor.redact_text` does, without skipping any pattern or scan."""
    text = patterns.mask_private_key_blocks(text)
    for pattern in patterns.BUILTIN_PATTERNS:
        text = pattern.replace(text)
    every_text = tuple((regex, ("",)) for regex, _ in patterns.ASSIGNMENT_SCANS)
    return patterns.mask_assignments(text, REDACTOR.is_secret_key, every_text)


@pytest.mark.parametrize("pattern", patterns.BUILTIN_PATTERNS, ids=lambda pattern: pattern.name)
@pytest.mark.attack("secret in audit trail or logs")
def test_trigger_finds_part_of_every_match(pattern: patterns.ValuePattern) -> None:
    # Text without a trigger is not scanned, so a trigger that misses some matches of its
    # pattern would leave those secrets unmasked.
    assert pattern.trigger is not None
    trigger = re.compile(pattern.trigger)

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(pattern.regex, fullmatch=True))
    def check(secret: str) -> None:
        assert trigger.search(secret) is not None
        assert REDACTOR.redact_text(secret) == _scan_every_pattern(secret)

    check()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:=/@-_ \"'\tghpxoABeyJ.kK")), max_size=60))
def test_skipped_scans_change_nothing(text: str) -> None:
    assert REDACTOR.redact_text(text) == _scan_every_pattern(text)


@pytest.mark.attack("secret in audit trail or logs")
def test_log_event_is_masked() -> None:
    event = {
        "event": "downstream_called",
        "token": "abc",
        "session": "session-7",
        "url": "https://u:hunter2@host/",
        "headers": {"Authorization": "Bearer abcdefgh"},
        "count": 3,
        "_record": object(),
    }

    masked = redact_event(None, "info", event)

    assert masked["token"] == "[REDACTED:secret-field]"
    assert masked["session"] == "session-7"
    assert masked["url"] == "https://u:[REDACTED:url-password]@host/"
    assert masked["headers"] == {"Authorization": "[REDACTED:secret-field]"}
    assert masked["count"] == 3
    assert masked["_record"] is event["_record"]


@pytest.mark.attack("secret in audit trail or logs")
def test_log_event_traceback_is_masked() -> None:
    try:
        raise RuntimeError("connect failed for postgres://app:hunter2@db/main")
    except RuntimeError:
        masked = redact_event(None, "error", {"event": "failed", "exc_info": True})

    assert "hunter2" not in masked["exception"]
    assert "[REDACTED:url-password]" in masked["exception"]


@pytest.mark.attack("secret in audit trail or logs")
def test_processor_masks_rendered_log_line() -> None:
    lines: list[str] = []
    logger = structlog.wrap_logger(
        structlog.testing.ReturnLogger(),
        processors=[redact_event, structlog.processors.JSONRenderer()],
    )

    lines.append(logger.info("login", password="hunter2", note="token=abc123"))

    assert "hunter2" not in lines[0]
    assert "abc123" not in lines[0]
