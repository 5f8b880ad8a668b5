"""The `mcp-guard audit` commands, run through their argparse tree against real files."""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from support import run_audit

from mcp_guard.audit import CallIntent, CallOutcome, SqliteAuditStore
from mcp_guard.audit.cli import add_audit_commands, parse_duration, run_audit_command

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]
StoreFactory = Callable[..., SqliteAuditStore]


@pytest.fixture(autouse=True)
def key_in_environment(key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GUARD_AUDIT_KEY", key.hex())


@pytest.fixture
async def calls(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> list[CallIntent]:
    """Record three finished calls and return their intents, oldest first."""
    intents = [
        make_intent(client="alice", tool="read_file"),
        make_intent(
            client="bob", tool="write_file", decision="approve", arguments={"text": "\x1b[31mred\u202e"}
        ),
        make_intent(client="bob", tool="delete_file", decision="deny", time="2020-01-01T00:00:00Z"),
    ]
    outcomes = ["succeeded", "approval_declined", "denied"]
    async with new_store() as store:
        for intent, outcome in zip(intents, outcomes, strict=True):
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id, outcome=outcome))
    return intents


async def test_search_lists_matching_calls(calls: list[CallIntent], state_dir: Path) -> None:
    status, output = await run_audit(state_dir, "search", "--client", "bob")

    lines = output.splitlines()
    assert status == 0
    assert len(lines) == 2
    assert calls[1].call_id in output
    assert calls[2].call_id in output
    assert calls[0].call_id not in output


async def test_search_without_matches_says_so(
    calls: list[CallIntent], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_audit(state_dir, "search", "--client", "carol")

    assert status == 0
    assert output == ""
    assert capsys.readouterr().err.strip() == "No calls match."


async def test_search_by_exported_tool_name_explains_the_filter(
    calls: list[CallIntent], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_audit(state_dir, "search", "--tool", "files__read_file")
    hint = capsys.readouterr().err
    _, by_server_name = await run_audit(state_dir, "search", "--server", "files", "--tool", "read_file")

    assert status == 0
    assert output == ""
    assert "'files__read_file' looks like the name a client sees" in hint
    assert "Try --server files --tool read_file" in hint
    assert calls[0].call_id in by_server_name


async def test_search_line_shows_outcome_detail(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory, state_dir: Path
) -> None:
    intent = make_intent(server="sandbox", tool="run_code")
    async with new_store() as store:
        await store.record_intent(intent)
        await store.record_outcome(
            make_outcome(intent.call_id, detail="local sandbox, python, 0.031 s, exit code 0", preview="7")
        )
        stopped = make_intent(server="sandbox", tool="run_code")
        await store.record_intent(stopped)
        detail = "local sandbox, python, 5.009 s, no exit code, stopped: timeout"
        await store.record_outcome(
            make_outcome(stopped.call_id, detail=detail, latency_ms=5010.458127999755, preview="")
        )

    _, output = await run_audit(state_dir, "search", "--tool", "run_code")
    _, details = await run_audit(state_dir, "show", stopped.call_id)

    lines = output.splitlines()
    assert lines[0].endswith("[local sandbox, python, 0.031 s, exit code 0]  7")
    # The detail is not cut where the other cells are, so how a run ended stays readable.
    assert lines[1].endswith("[local sandbox, python, 5.009 s, no exit code, stopped: timeout]")
    assert "  latency_ms: 5010.5\n" in details


async def test_search_line_shows_arguments_once(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory, state_dir: Path
) -> None:
    intent = make_intent(tool="read_text_file", arguments={"path": "/home/me/notes.txt"})
    reason = "arguments['path'] names mcp-guard's state directory, which mcp-guard lets no tool call reach"
    async with new_store() as store:
        await store.record_intent(intent)
        await store.record_outcome(
            make_outcome(
                intent.call_id, outcome="denied", detail=reason, preview=f"Denied by mcp-guard: {reason}"
            )
        )
        written = make_intent(
            tool="write_file", arguments={"content": "x" * 200, "path": "/home/me/long.txt"}
        )
        await store.record_intent(written)
        await store.record_outcome(make_outcome(written.call_id))
        limited = make_intent(tool="search", arguments={"query": "notes"})
        await store.record_intent(limited)
        await store.record_outcome(
            make_outcome(
                limited.call_id,
                outcome="rate_limited",
                detail="limit 'searches': requests_per_minute",
                preview="Rate limited by mcp-guard: this call would exceed limit 'searches'; retry in 33 s.",
            )
        )

    _, output = await run_audit(state_dir, "search")

    assert '{"path":"/home/me/notes.txt"}' in output
    assert output.count("names mcp-guard's state") == 1
    assert output.count("'searches'") == 1
    # The short path comes before the long content, so the cut leaves it readable.
    assert '{"path":"/home/me/long.txt","content":"xxx' in output


async def test_search_filters_by_outcome_and_time(calls: list[CallIntent], state_dir: Path) -> None:
    _, declined = await run_audit(state_dir, "search", "--outcome", "approval_declined")
    _, old = await run_audit(state_dir, "search", "--until", "2021-01-01")

    assert calls[1].call_id in declined
    assert len(declined.splitlines()) == 1
    assert calls[2].call_id in old
    assert len(old.splitlines()) == 1


async def test_show_prints_call_with_escaped_controls(calls: list[CallIntent], state_dir: Path) -> None:
    status, output = await run_audit(state_dir, "show", calls[1].call_id)

    assert status == 0
    assert "approval_declined" in output
    assert "\x1b" not in output
    assert "\u202e" not in output
    assert "\\u001b[31mred\\u202e" in output


async def test_show_unknown_call_fails(
    calls: list[CallIntent], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_audit(state_dir, "show", "no-such-call")

    assert status == 1
    assert output == ""
    error = capsys.readouterr().err
    assert "No call with id 'no-such-call'" in error
    assert "copy the whole id from the second column of `audit search`" in error


async def test_export_writes_json_lines_oldest_first(
    calls: list[CallIntent], state_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "export.jsonl"

    status, _ = await run_audit(state_dir, "export", "--output", str(target))

    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert status == 0
    assert [record["intent"]["call_id"] for record in records] == [intent.call_id for intent in calls]
    assert records[1]["outcome"]["outcome"] == "approval_declined"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


@pytest.mark.legitimate("audit row tampering")
async def test_verify_reports_intact_trail(calls: list[CallIntent], state_dir: Path) -> None:
    status, output = await run_audit(state_dir, "verify")

    assert status == 0
    assert "intact: 6 rows verified (rows 1 to 6)" in output


@pytest.mark.attack("audit row tampering")
async def test_verify_reports_broken_trail(
    calls: list[CallIntent], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(state_dir / "audit.sqlite3") as connection:
        connection.execute("UPDATE audit_rows SET client = 'mallory' WHERE id = 3")
    connection.close()

    status, output = await run_audit(state_dir, "verify")

    assert status == 2
    assert output == ""
    assert "broken at row 3" in capsys.readouterr().err


@pytest.mark.legitimate("audit row deletion or reordering")
async def test_prune_then_verify_passes(calls: list[CallIntent], state_dir: Path) -> None:
    pruned_status, pruned = await run_audit(state_dir, "prune", "--max-rows", "2")
    verify_status, verified = await run_audit(state_dir, "verify")

    assert pruned_status == 0
    assert "Deleted 4 rows, up to row 4." in pruned
    assert verify_status == 0
    assert "rows 5 to 6" in verified


async def test_prune_while_gateway_writes_fails(
    calls: list[CallIntent], state_dir: Path, new_store: StoreFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with new_store():
        status, _ = await run_audit(state_dir, "prune", "--max-rows", "1")

    assert status == 1
    assert f"another process (PID {os.getpid()}) is writing" in capsys.readouterr().err


async def test_missing_trail_fails(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = await run_audit(state_dir, "search")

    assert status == 1
    assert "No audit trail at" in capsys.readouterr().err


async def test_follow_prints_new_rows(
    calls: list[CallIntent], state_dir: Path, new_store: StoreFactory, make_intent: IntentFactory
) -> None:
    parser = argparse.ArgumentParser()
    add_audit_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "search", "--follow", "--interval", "0.02", "--tool", "grep"])
    output = io.StringIO()
    fresh = make_intent(tool="grep")

    async with anyio.create_task_group() as group, new_store() as store:
        group.start_soon(_follow_into, args, state_dir, output)
        await anyio.sleep(0.05)
        await store.record_intent(make_intent(tool="other"))
        await store.record_intent(fresh)
        with anyio.fail_after(5):
            await _wait_for_text(output, fresh.call_id)
        group.cancel_scope.cancel()

    lines = output.getvalue().splitlines()
    assert len(lines) == 1
    assert "intent" in lines[0]


async def _wait_for_text(output: io.StringIO, text: str) -> None:
    # Polling, because the follow loop itself polls and signals nothing.
    while text not in output.getvalue():  # noqa: ASYNC110
        await anyio.sleep(0.02)


async def _follow_into(args: argparse.Namespace, state_dir: Path, output: io.StringIO) -> None:
    await run_audit_command(args, state_dir, stdout=output)


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("30m", 1800), ("12h", 43200), ("90d", 7776000)])
def test_duration_is_parsed(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_invalid_duration_is_rejected() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration '3 days'"):
        parse_duration("3 days")


async def test_search_needs_no_key(
    calls: list[CallIntent],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The key is in a secret store that this shell cannot read: searching works, verifying does not.
    monkeypatch.delenv("MCP_GUARD_AUDIT_KEY")

    status, output = await run_audit(state_dir, "search", "--client", "alice")
    verified = await run_audit(state_dir, "verify")

    assert status == 0
    assert calls[0].call_id in output
    assert verified == (1, "")
    assert capsys.readouterr().err.endswith(
        f"no audit key at {state_dir / 'audit.key'} and $MCP_GUARD_AUDIT_KEY is not set.\n"
    )


async def test_search_lists_running_calls(
    calls: list[CallIntent], new_store: StoreFactory, make_intent: IntentFactory, state_dir: Path
) -> None:
    unfinished = make_intent(client="dave", tool="slow_tool")
    async with new_store() as store:
        await store.record_intent(unfinished)

    status, output = await run_audit(state_dir, "search", "--outcome", "running")

    assert status == 0
    assert unfinished.call_id in output
    assert all(call.call_id not in output for call in calls)


async def test_search_line_escapes_line_breaks(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory, state_dir: Path
) -> None:
    intent = make_intent(tool="run_code")
    async with new_store() as store:
        await store.record_intent(intent)
        await store.record_outcome(make_outcome(intent.call_id, preview="first\nsecond\tthird\x1b[0m"))

    _, output = await run_audit(state_dir, "search")

    assert len(output.splitlines()) == 1
    assert "first\\nsecond\\tthird\\x1b[0m" in output
