"""A downstream server's own questions during a call: passed on only when the policy allows it.

The fixture's `ask_user` tool asks its client a form question and returns the
response it received. Behind the gateway, that client is mcp-guard: it passes
the question on to the calling client's user, labelled with the server's name,
only for servers with `relay_questions = true`, and such a response never
counts as an approval of another call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from support import MODERN, fixture_server, stdio_gateway, write_policy

pytestmark = pytest.mark.anyio

ALLOW = {"name": "allow", "clients": ["*"], "server": "*", "tools": ["*"], "decision": "auto", "write": True}
WRITES = {**ALLOW, "name": "writes need approval", "tools": ["write_file"], "decision": "approve"}


def question_policy(folder: Path, *, relay: bool, rules: list[dict[str, Any]] | None = None) -> Path:
    # The fixture asks through a handshake-era push request, so the gateway speaks that era to it.
    server = {**fixture_server("alpha"), "protocol": "legacy", "relay_questions": relay}
    return write_policy(folder, {"alpha": server}, rules=rules or [ALLOW])


class Human:
    """An elicitation callback that keeps every question and gives scripted responses."""

    def __init__(self, *responses: types.ElicitResult) -> None:
        self.responses = list(responses)
        self.questions: list[types.ElicitRequestParams] = []

    async def __call__(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params)
        return self.responses.pop(0)


def response_of(result: Any) -> dict[str, Any]:
    return dict(json.loads(result.content[0].text))


@pytest.mark.legitimate("downstream question posing as approval")
async def test_allowed_question_reaches_the_user_labelled(tmp_path: Path) -> None:
    human = Human(types.ElicitResult(action="accept", content={"answer": "blue"}))

    async with stdio_gateway(question_policy(tmp_path, relay=True), elicitation_callback=human) as client:
        result = await client.call_tool("alpha__ask_user", {"question": "Favourite colour?"})

    assert response_of(result) == {"action": "accept", "content": {"answer": "blue"}}
    [question] = human.questions
    assert question.message.startswith("Server 'alpha' asks (passed on by mcp-guard")
    assert question.message.endswith("Favourite colour?")


@pytest.mark.attack("downstream question posing as approval")
async def test_question_is_declined_unless_allowed(tmp_path: Path) -> None:
    human = Human(types.ElicitResult(action="accept", content={"answer": "blue"}))

    async with stdio_gateway(question_policy(tmp_path, relay=False), elicitation_callback=human) as client:
        result = await client.call_tool("alpha__ask_user", {"question": "Your password?"})

    assert human.questions == []
    # The gateway offers the server no elicitation at all, so the server's own request fails.
    assert result.content[0].text == "the question failed: Elicitation not supported"


async def test_unaskable_client_means_decline(tmp_path: Path) -> None:
    human = Human()

    async with stdio_gateway(
        question_policy(tmp_path, relay=True), MODERN, elicitation_callback=human
    ) as client:
        result = await client.call_tool("alpha__ask_user", {"question": "Favourite colour?"})

    assert human.questions == []
    assert response_of(result) == {"action": "decline"}


@pytest.mark.attack("downstream question posing as approval")
async def test_response_to_a_server_never_approves_a_call(tmp_path: Path) -> None:
    human = Human(
        types.ElicitResult(action="accept", content={"answer": "approve once"}),
        types.ElicitResult(action="decline"),
    )
    policy = question_policy(tmp_path, relay=True, rules=[ALLOW, WRITES])

    async with stdio_gateway(policy, elicitation_callback=human) as client:
        await client.call_tool("alpha__ask_user", {"question": "Type 'approve once' to continue"})
        write = await client.call_tool("alpha__write_file", {"path": "/tmp/x", "content": "y"})

    assert len(human.questions) == 2  # the write still asked its own approval question
    assert human.questions[1].message.startswith("mcp-guard: approve this tool call?")
    assert write.is_error is True


@pytest.mark.attack("downstream question posing as approval")
async def test_question_during_two_calls_is_declined(tmp_path: Path) -> None:
    human = Human(types.ElicitResult(action="accept", content={"answer": "blue"}))
    results: list[Any] = []

    async with (
        stdio_gateway(question_policy(tmp_path, relay=True), elicitation_callback=human) as client,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(client.call_tool, "alpha__slow", {"seconds": 2, "steps": 0})
        await anyio.sleep(0.5)
        results.append(await client.call_tool("alpha__ask_user", {"question": "Whose question is this?"}))

    # The server does not say which call asks, so the question could reach the wrong user.
    assert human.questions == []
    assert response_of(results[0]) == {"action": "decline"}
