"""Human approval for 2026-07-28 clients through input-required results (MRTR).

The gateway is a real process over stdio in front of the fixture server, which
records every call it receives, so each test counts how often the approved
tool really ran. The SDK client's elicitation callback answers the question
and drives the retry, and tests of forged or replayed states drive the
retry by hand with `allow_input_required=True`.
"""

from __future__ import annotations

import base64
import random
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError
from support import LEGACY, MODERN, fixture_server, gateway_parameters, read_records, write_policy

from mcp_guard.audit import CallFilter, SqliteAuditStore

pytestmark = pytest.mark.anyio

INPUT_KEY = "mcp-guard/approve"
ALLOW = {"name": "allow", "clients": ["*"], "server": "*", "tools": ["*"], "decision": "auto", "write": True}
WRITES = {
    "name": "writes need approval",
    "clients": ["*"],
    "server": "alpha",
    "tools": ["write_file"],
    "decision": "approve",
    "write": True,
}
WRITE_A = {"path": "/tmp/a.txt", "content": "hello"}
WRITE_B = {"path": "/tmp/b.txt", "content": "hello"}
CHOICES = ["approve once", "approve this exact call for 10 minutes", "deny"]
# Bit-flipped states sent besides every truncation. With them the forged-state test took about
# 15 s on a 2-core AMD EPYC virtual machine.
FLIPPED_STATES = 2000
CONCURRENT_RETRIES = 16


def approval_policy(folder: Path, record: Path, **approval: Any) -> Path:
    return write_policy(
        folder,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[ALLOW, WRITES],
        clients={"alice": {}, "bob": {}},
        gateway={"default_client": "alice"},
        approval=approval,
    )


@asynccontextmanager
async def gateway(
    policy: Path, mode: str = MODERN, *, client: str = "alice", **options: Any
) -> AsyncIterator[Client]:
    async with Client(gateway_parameters(policy, "--client", client), mode=mode, **options) as connected:
        yield connected


def writes(record: Path) -> list[dict[str, Any]]:
    return [
        event["arguments"]
        for event in read_records(record)
        if event["event"] == "call" and event["tool"] == "write_file"
    ]


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


class Human:
    """An elicitation callback that gives scripted answers and keeps the questions it was asked."""

    def __init__(self, *answers: types.ElicitResult) -> None:
        self.answers = list(answers)
        self.questions: list[types.ElicitRequestParams] = []

    async def __call__(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params)
        return self.answers.pop(0)


def accept(decision: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"decision": decision})


APPROVE_ONCE = {INPUT_KEY: accept("approve once")}


async def outcomes(state_dir: Path) -> list[tuple[str, str | None]]:
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        calls = await store.search(CallFilter(), limit=10_000, oldest_first=True)
    return [(call.outcome.outcome, call.outcome.detail) for call in calls if call.outcome is not None]


async def ask(client: Client, arguments: dict[str, Any] = WRITE_A, **retry: Any) -> Any:
    """Send one round of the call by hand and return the raw result, input-required or not."""
    return await client.session.call_tool("alpha__write_file", arguments, allow_input_required=True, **retry)


async def first_state(client: Client, arguments: dict[str, Any] = WRITE_A) -> str:
    result = await ask(client, arguments)
    assert isinstance(result, types.InputRequiredResult), result
    assert result.request_state is not None
    return result.request_state


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (accept("approve once"), "succeeded"),
        (types.ElicitResult(action="decline"), "approval_declined"),
        (types.ElicitResult(action="cancel"), "approval_declined"),
        (types.ElicitResult(action="accept", content={}), "approval_declined"),
        (types.ElicitResult(action="accept", content={"decision": "yes please"}), "approval_declined"),
        (types.ElicitResult(action="accept", content={"decision": True}), "approval_declined"),
        (
            types.ElicitResult(action="accept", content={"decision": "approve once", "extra": True}),
            "approval_declined",
        ),
        (accept("deny"), "approval_declined"),
    ],
)
@pytest.mark.attack("approval answer forged or malformed", params={"expected": "approval_declined"})
@pytest.mark.legitimate("MRTR state tampering", params={"expected": "succeeded"})
async def test_answer_decides_the_call(tmp_path: Path, answer: types.ElicitResult, expected: str) -> None:
    record = tmp_path / "alpha.jsonl"
    human = Human(answer)

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=human) as client:
        result = await client.call_tool("alpha__write_file", WRITE_A)

    assert len(human.questions) == 1
    question = human.questions[0]
    assert isinstance(question, types.ElicitRequestFormParams)
    assert "Server: alpha" in question.message
    assert "Tool: write_file" in question.message
    assert 'path: "/tmp/a.txt"' in question.message
    assert "Rule: writes need approval" in question.message
    assert question.requested_schema["properties"]["decision"]["enum"] == CHOICES
    trail = await outcomes(tmp_path / "state")
    assert [outcome for outcome, _ in trail] == ["approval_pending", expected]
    assert "MRTR" in (trail[0][1] or "")
    if expected == "succeeded":
        assert result.is_error is False
        assert writes(record) == [WRITE_A]
    else:
        assert result.is_error is True
        assert text_of(result).startswith("Denied by mcp-guard: the")
        assert writes(record) == []


async def test_question_is_input_required_result(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=Human()) as client:
        result = await ask(client)

    assert isinstance(result, types.InputRequiredResult)
    assert result.input_requests is not None
    assert set(result.input_requests) == {INPUT_KEY}
    question = result.input_requests[INPUT_KEY]
    assert isinstance(question, types.ElicitRequest)
    assert isinstance(question.params, types.ElicitRequestFormParams)
    assert question.params.requested_schema["required"] == ["decision"]
    key = tmp_path / "state" / "approval.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The key is stored as hex text, which tools that show files can print.
    assert len(bytes.fromhex(key.read_text(encoding="ascii"))) == 32
    assert key.read_text(encoding="ascii").strip() not in (result.request_state or "")
    assert writes(record) == []


@pytest.mark.legitimate("approval grant replay")
async def test_minutes_grant_covers_next_call(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    human = Human(accept("approve this exact call for 10 minutes"))

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=human) as client:
        first = await client.call_tool("alpha__write_file", WRITE_A)
        second = await client.call_tool("alpha__write_file", WRITE_A)

    assert first.is_error is False
    assert second.is_error is False
    assert len(human.questions) == 1
    assert writes(record) == [WRITE_A, WRITE_A]


@pytest.mark.attack("approval answer forged or malformed")
async def test_formless_client_waits_out_of_band(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with gateway(approval_policy(tmp_path, record)) as client:
        result = await ask(client, input_responses=APPROVE_ONCE)

    assert isinstance(result, types.CallToolResult)
    assert result.is_error is True
    assert "Approval pending" in text_of(result)
    assert writes(record) == []


@pytest.mark.attack("approval flood", attempts=4)
async def test_failed_question_is_no_denial(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = approval_policy(tmp_path, record, denials_before_cooldown=3, cooldown_seconds=300)

    async def broken(ctx: Any, params: types.ElicitRequestParams) -> types.ErrorData:
        return types.ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found")

    async with gateway(policy, elicitation_callback=broken) as client:
        for index in range(4):
            # The SDK client raises its callback's error and sends no retry, so the gateway never
            # learns that the question failed: it expires unanswered.
            with pytest.raises(MCPError, match="Method not found"):
                await client.call_tool("alpha__write_file", {**WRITE_A, "content": str(index)})
    human = Human(accept("approve once"))
    async with gateway(policy, elicitation_callback=human) as client:
        approved = await client.call_tool("alpha__write_file", WRITE_A)

    assert len(human.questions) == 1  # no cool-down: the failed questions were not denials
    assert approved.is_error is False
    assert writes(record) == [WRITE_A]
    trail = await outcomes(tmp_path / "state")
    assert [outcome for outcome, _ in trail] == ["approval_pending"] * 5 + ["succeeded"]


@pytest.mark.attack("MRTR state tampering")
async def test_answer_without_state_is_asked_again(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=Human()) as client:
        result = await ask(client, input_responses=APPROVE_ONCE)

    assert isinstance(result, types.InputRequiredResult)
    assert writes(record) == []
    trail = await outcomes(tmp_path / "state")
    assert trail[0][0] == "approval_pending"
    assert "without a request state" in (trail[0][1] or "")


@pytest.mark.attack("approval grant replay", attempts=3)
async def test_state_is_used_once(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=Human()) as client:
        state = await first_state(client)
        approved = await ask(client, input_responses=APPROVE_ONCE, request_state=state)
        replays = [await ask(client, input_responses=APPROVE_ONCE, request_state=state) for _ in range(3)]

    assert isinstance(approved, types.CallToolResult)

    assert approved.is_error is False
    assert all(isinstance(replay, types.InputRequiredResult) for replay in replays)
    assert writes(record) == [WRITE_A]


@pytest.mark.attack("approval grant replay", attempts=10)
async def test_concurrent_answers_run_once(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    results: list[Any] = []

    async with gateway(approval_policy(tmp_path, record), elicitation_callback=Human()) as client:
        state = await first_state(client)

        async def answer() -> None:
            results.append(await ask(client, input_responses=APPROVE_ONCE, request_state=state))

        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(answer)

    assert sum(isinstance(r, types.CallToolResult) and r.is_error is False for r in results) == 1
    assert writes(record) == [WRITE_A]


def forged_states(state: str, count: int, seed: int = 2026) -> list[str]:
    """Return altered copies of a sealed state: every truncation, bit flips, and edits of its text."""
    rng = random.Random(seed)
    prefix, body = state.split(".", 1)
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    forged = {state[:cut] for cut in range(len(state))}
    while len(forged) < len(state) + count:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        forged.add(f"{prefix}." + base64.urlsafe_b64encode(bytes(data)).decode().rstrip("="))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. "
    for _ in range(200):
        position = rng.randrange(len(state))
        forged.add(state[:position] + rng.choice(alphabet) + state[position + 1 :])
    forged |= {state + "A", state + "==", " " + state, "v1." + body, "mg2." + body, state.upper(), ""}
    forged.discard(state)
    return sorted(forged)


@pytest.mark.attack("MRTR state tampering", attempts=2900)
async def test_forged_states_never_run(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = approval_policy(tmp_path, record, max_pending_per_client=1000)
    results: list[Any] = []

    async with gateway(policy, elicitation_callback=Human()) as client:
        state = await first_state(client)
        forged = forged_states(state, FLIPPED_STATES)
        limiter = anyio.CapacityLimiter(CONCURRENT_RETRIES)

        async def retry(candidate: str) -> None:
            async with limiter:
                results.append(await ask(client, input_responses=APPROVE_ONCE, request_state=candidate))

        async with anyio.create_task_group() as tasks:
            for candidate in forged:
                tasks.start_soon(retry, candidate)
        other_arguments = await ask(client, WRITE_B, input_responses=APPROVE_ONCE, request_state=state)
        genuine = await ask(client, input_responses=APPROVE_ONCE, request_state=state)

    assert len(forged) > 2500
    asked_again = [result for result in results if isinstance(result, types.InputRequiredResult)]
    refused = [result for result in results if isinstance(result, types.CallToolResult)]
    assert len(asked_again) + len(refused) == len(forged)
    # Each forged state is asked again until the client has 1000 questions waiting, then refused.
    assert len(asked_again) == 999
    assert all(result.is_error is True and "waiting" in text_of(result) for result in refused)
    assert isinstance(other_arguments, types.CallToolResult)
    assert other_arguments.is_error is True
    assert isinstance(genuine, types.CallToolResult)
    assert genuine.is_error is False
    assert writes(record) == [WRITE_A]


@pytest.mark.attack("approval after its time ran out", attempts=3)
async def test_expired_state_times_out(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = approval_policy(tmp_path, record, timeout_seconds=1)

    async with gateway(policy, elicitation_callback=Human()) as client:
        states = [await first_state(client) for _ in range(3)]
        await anyio.sleep(1.2)
        late = [await ask(client, input_responses=APPROVE_ONCE, request_state=state) for state in states]

    # Asking again would expire again while the person decides, so a late response ends the call.
    assert all(isinstance(result, types.CallToolResult) and result.is_error for result in late)
    assert writes(record) == []
    kinds = [outcome for outcome, _ in await outcomes(tmp_path / "state")]
    assert kinds.count("approval_timed_out") == 3


@pytest.mark.attack("MRTR state tampering", attempts=2)
async def test_state_of_another_client_never_runs(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policies = []
    for folder in (tmp_path / "alice", tmp_path / "bob"):
        # Two gateways cannot share one audit file, so they share only the sealing key.
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "approval.key").write_bytes(bytes(range(32)))
        policies.append(approval_policy(folder, record))

    async with (
        gateway(policies[0], client="alice", elicitation_callback=Human()) as alice,
        gateway(policies[1], client="bob", elicitation_callback=Human()) as bob,
    ):
        alice_state = await first_state(alice)
        bob_state = await first_state(bob)
        at_bob = await ask(bob, input_responses=APPROVE_ONCE, request_state=alice_state)
        at_alice = await ask(alice, input_responses=APPROVE_ONCE, request_state=bob_state)

    assert isinstance(at_bob, types.InputRequiredResult)
    assert isinstance(at_alice, types.InputRequiredResult)
    assert writes(record) == []
    for folder in ("alice", "bob"):
        _, detail = (await outcomes(tmp_path / folder / "state"))[-1]
        assert "issued for another call: client, session differ" in (detail or "")


@pytest.mark.attack("MRTR state tampering")
async def test_state_of_another_key_never_runs(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    async with gateway(approval_policy(tmp_path / "one", record), elicitation_callback=Human()) as client:
        foreign = await first_state(client)
    async with gateway(approval_policy(tmp_path / "two", record), elicitation_callback=Human()) as client:
        result = await ask(client, input_responses=APPROVE_ONCE, request_state=foreign)

    assert isinstance(result, types.InputRequiredResult)
    assert writes(record) == []
    _, detail = (await outcomes(tmp_path / "two" / "state"))[-1]
    assert "not sealed by this gateway" in (detail or "")


@pytest.mark.attack("MRTR state tampering", attempts=2)
async def test_legacy_input_fields_ignored(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = approval_policy(tmp_path, record)
    human = Human(types.ElicitResult(action="decline"))

    async with gateway(policy, elicitation_callback=Human()) as modern:
        state = await first_state(modern)
    async with gateway(policy, LEGACY) as legacy:
        pending = await ask(legacy, input_responses=APPROVE_ONCE, request_state=state)
    async with gateway(policy, LEGACY, elicitation_callback=human) as legacy:
        declined = await ask(legacy, input_responses=APPROVE_ONCE, request_state=state)

    assert isinstance(pending, types.CallToolResult)
    assert pending.is_error is True
    assert "Approval pending" in text_of(pending)
    assert isinstance(declined, types.CallToolResult)
    assert declined.is_error is True
    assert len(human.questions) == 1  # asked within the call; the sent answer was not used
    assert writes(record) == []
    trail = await outcomes(tmp_path / "state")
    assert [outcome for outcome, _ in trail] == ["approval_pending", "approval_pending", "approval_declined"]
    # The legacy calls never looked at the state: it was neither accepted nor rejected.
    assert all("request state" not in (detail or "") for _, detail in trail[1:])


def limited_policy(folder: Path, record: Path, requests_per_minute: int) -> Path:
    return write_policy(
        folder,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[ALLOW, WRITES],
        clients={"alice": {}},
        gateway={"default_client": "alice"},
        limits={"rules": [{"name": "each client", "requests_per_minute": requests_per_minute}]},
    )


@pytest.mark.legitimate("rate-limit burst")
async def test_answer_round_skips_request_counts(tmp_path: Path) -> None:
    # The first round takes the last request of the minute. The round that carries the person's
    # decision is the same call, so the limit must not reject it.
    record = tmp_path / "alpha.jsonl"
    human = Human(accept("approve once"))

    async with gateway(limited_policy(tmp_path, record, 3), elicitation_callback=human) as client:
        for _ in range(2):
            await client.call_tool("alpha__echo", {"text": "spend"})
        approved = await client.call_tool("alpha__write_file", WRITE_A)
        after = await client.call_tool("alpha__echo", {"text": "over"})

    assert len(human.questions) == 1
    assert approved.is_error is False, text_of(approved)
    assert writes(record) == [WRITE_A]
    assert after.is_error is True
    assert "Rate limited by mcp-guard" in text_of(after)


@pytest.mark.attack("rate-limit burst", attempts=2)
async def test_input_responses_skip_no_limits(tmp_path: Path) -> None:
    # The approval stage ignores input responses on a call that needs no approval, so they
    # must not spare it a request either.
    record = tmp_path / "alpha.jsonl"

    async with gateway(limited_policy(tmp_path, record, 2)) as client:
        results = [
            await client.session.call_tool(
                "alpha__echo", {"text": "free?"}, allow_input_required=True, input_responses=APPROVE_ONCE
            )
            for _ in range(3)
        ]

    assert [result.is_error for result in results] == [False, False, True]
    assert "Rate limited by mcp-guard" in text_of(results[2])
    echoes = [event for event in read_records(record) if event["event"] == "call" and event["tool"] == "echo"]
    assert len(echoes) == 2
