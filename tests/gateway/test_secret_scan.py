"""Results that contain the gateway's keys or the credentials it reads are withheld.

A tool can read the gateway's files without naming them: `git diff` in a repository that contains
the state directory shows the audit key. The calls go through a running gateway in front of the
published git server and the fixture server.
"""

from __future__ import annotations

import base64
import sysconfig
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from support import fixture_server, gateway_parameters, stdio_gateway, write_policy

from mcp_guard.approval.sealed import load_or_create_key
from mcp_guard.audit import CallFilter, SqliteAuditStore
from mcp_guard.config.loading import load_config
from mcp_guard.gateway.secret_scan import SecretScan, gateway_secrets, secret

pytestmark = pytest.mark.anyio

SCRIPTS = Path(sysconfig.get_path("scripts"))
TOKEN = "fixture-token-5f1c2e9a7b"


@pytest.mark.slow
@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=2)
async def test_git_diff_of_state_dir_withheld(tmp_path: Path) -> None:
    # The policy and its state directory lie in the repository the git server is given.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    await anyio.run_process([*git, "init", "-q"])
    (repo / "notes.txt").write_text("first\n")
    # The databases' diffs would be long; git shows "Binary files differ" instead.
    (repo / ".gitattributes").write_text("*.sqlite3* binary\n")
    servers = {"git": {"command": str(SCRIPTS / "mcp-server-git"), "args": ["--repository", str(repo)]}}
    policy = write_policy(repo, servers)

    async with stdio_gateway(policy) as client:
        added = await client.call_tool("git__git_add", {"repo_path": str(repo), "files": ["."]})
        diff = await client.call_tool("git__git_diff_staged", {"repo_path": str(repo)})
        status = await client.call_tool("git__git_status", {"repo_path": str(repo)})
    key = (repo / "state" / "audit.key").read_text().strip()
    async with SqliteAuditStore.in_state_dir(repo / "state", read_only=True) as store:
        denied = await store.search(CallFilter(outcome="denied"))

    assert added.is_error is False
    assert diff.is_error is True
    assert diff.content[0].text.startswith(
        "mcp-guard withheld the result of this call: it contains mcp-guard's audit key, which no result "
        "may carry. Move gateway.state_dir out of the folders that servers are given"
    )
    assert key not in diff.content[0].text
    assert status.is_error is False
    assert "notes.txt" in status.content[0].text
    assert [call.intent.tool for call in denied] == ["git_diff_staged"]
    assert denied[0].outcome is not None
    assert denied[0].outcome.detail == "the result contains mcp-guard's audit key, so mcp-guard withheld it"
    assert key not in (denied[0].outcome.preview or "")


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=2)
async def test_server_credential_in_result_withheld(tmp_path: Path) -> None:
    server = {**fixture_server("alpha"), "env_from": {"API_TOKEN": "${ALPHA_TOKEN}"}}
    policy = write_policy(tmp_path, {"alpha": server})

    async with stdio_gateway(policy, env={"ALPHA_TOKEN": TOKEN}) as client:
        leaked = await client.call_tool("alpha__env", {"name": "API_TOKEN"})
        other = await client.call_tool("alpha__env", {"name": "HOME"})
        prefix = await client.call_tool("alpha__echo", {"text": TOKEN[:7]})

    assert leaked.is_error is True
    assert "it contains the value of $ALPHA_TOKEN (a credential of server 'alpha')" in leaked.content[0].text
    assert TOKEN not in leaked.content[0].text
    assert other.is_error is False
    assert prefix.content[0].text == TOKEN[:7]


def state_files_contain(state: Path, text: str) -> list[str]:
    """Return the names of the files in `state` whose bytes contain `text`."""
    return [path.name for path in state.iterdir() if path.is_file() and text.encode() in path.read_bytes()]


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=2)
async def test_server_credential_in_error_withheld(tmp_path: Path) -> None:
    # A server that puts its credential into an error message ("could not connect with TOKEN").
    server = {**fixture_server("alpha"), "env_from": {"API_TOKEN": "${ALPHA_TOKEN}"}}
    policy = write_policy(tmp_path, {"alpha": server})
    log = tmp_path / "gateway.log"

    with log.open("a") as errors:
        parameters = gateway_parameters(policy, env={"ALPHA_TOKEN": TOKEN})
        async with Client(stdio_client(parameters, errlog=errors)) as client:
            failed = await client.call_tool("alpha__env", {"name": "API_TOKEN", "via": "error"})
            with pytest.raises(MCPError) as other:
                await client.call_tool("alpha__env", {"name": "UNSET_NAME", "via": "error"})

    assert failed.is_error is True
    assert failed.content[0].text.startswith(
        "mcp-guard withheld the result of this call: it contains the value of $ALPHA_TOKEN"
    )
    # An error without a secret reaches the client as the server sent it.
    assert other.value.error.message == "could not connect with <unset>"
    assert TOKEN not in log.read_text()
    assert state_files_contain(tmp_path / "state", TOKEN) == []
    async with SqliteAuditStore.in_state_dir(tmp_path / "state", read_only=True) as store:
        [denied] = await store.search(CallFilter(outcome="denied"))
    assert denied.outcome is not None
    assert denied.outcome.detail == (
        "the server's error contains the value of $ALPHA_TOKEN (a credential of server 'alpha'), "
        "so mcp-guard withheld it"
    )


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=2)
async def test_server_credential_in_progress_message_withheld(tmp_path: Path) -> None:
    server = {**fixture_server("alpha"), "env_from": {"API_TOKEN": "${ALPHA_TOKEN}"}}
    policy = write_policy(tmp_path, {"alpha": server})
    messages: list[str | None] = []

    async def record(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with stdio_gateway(policy, env={"ALPHA_TOKEN": TOKEN}) as client:
        sent = await client.call_tool(
            "alpha__env", {"name": "API_TOKEN", "via": "progress"}, progress_callback=record
        )
        plain = await client.call_tool(
            "alpha__env", {"name": "UNSET_NAME", "via": "progress"}, progress_callback=record
        )

    assert sent.content[0].text == plain.content[0].text == "sent as progress"
    assert messages == [
        "mcp-guard withheld this progress message: it contains the value of $ALPHA_TOKEN "
        "(a credential of server 'alpha').",
        "connecting with <unset>",
    ]


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=1)
async def test_secret_in_request_error_withheld(tmp_path: Path) -> None:
    # The fixture's error for the item "locked" quotes the server's credential.
    server = {**fixture_server("alpha"), "env_from": {"API_TOKEN": "${ALPHA_TOKEN}"}}
    policy = write_policy(tmp_path, {"alpha": server})

    async with stdio_gateway(policy, env={"ALPHA_TOKEN": TOKEN}) as client:
        with pytest.raises(MCPError) as raised:
            await client.read_resource("fixture://alpha/items/locked")
        item = await client.read_resource("fixture://alpha/items/7")
    async with SqliteAuditStore.in_state_dir(tmp_path / "state", read_only=True) as store:
        [denied] = await store.search(CallFilter(outcome="denied"))

    assert raised.value.error.message == (
        "mcp-guard withheld the result of this request: it contains the value of $ALPHA_TOKEN "
        "(a credential of server 'alpha'), which no result may carry."
    )
    assert item.contents[0].text == "item 7 from alpha"
    assert denied.outcome is not None
    assert denied.outcome.detail == (
        "the server's error contains the value of $ALPHA_TOKEN (a credential of server 'alpha'), "
        "so mcp-guard withheld it"
    )
    assert state_files_contain(tmp_path / "state", TOKEN) == []


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=1)
async def test_secret_in_downstream_question_declined(tmp_path: Path) -> None:
    server = {**fixture_server("alpha"), "protocol": "legacy", "relay_questions": True}
    policy = write_policy(tmp_path, {"alpha": server})
    questions: list[types.ElicitRequestParams] = []

    async def human(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        questions.append(params)
        return types.ElicitResult(action="accept", content={"answer": "yes"})

    async with stdio_gateway(policy, elicitation_callback=human) as client:
        await client.call_tool("alpha__echo", {"text": "creates the state directory"})
        key = (tmp_path / "state" / "audit.key").read_text().strip()
        with_key = await client.call_tool("alpha__ask_user", {"question": f"Is {key} yours?"})
        plain = await client.call_tool("alpha__ask_user", {"question": "Favourite colour?"})

    assert with_key.content[0].text == '{"action": "decline"}'
    assert [question.message.rsplit("\n", 1)[-1] for question in questions] == ["Favourite colour?"]
    assert plain.content[0].text == '{"action": "accept", "content": {"answer": "yes"}}'


@pytest.mark.attack("gateway secret read through a tool that does not name it", attempts=1)
async def test_listed_tool_with_secret_left_out(tmp_path: Path) -> None:
    # A server that names a tool after its credential: the list the model reads leaves the tool out.
    server = {**fixture_server("alpha"), "env_from": {"API_TOKEN": "${ALPHA_TOKEN}"}, "allow_new_tools": True}
    policy = write_policy(tmp_path, {"alpha": server})
    changes, changed = anyio.create_memory_object_stream[None](100)

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changes.send_nowait(None)

    names: set[str] = set()
    with changes, changed:
        async with stdio_gateway(policy, env={"ALPHA_TOKEN": TOKEN}, message_handler=on_message) as client:
            await client.call_tool("alpha__add_tool", {"name": f"lookup-{TOKEN}"})
            await client.call_tool("alpha__add_tool", {"name": "lookup-plain"})
            # The second tool is listed once the gateway has the server's listing with both.
            with anyio.fail_after(10):
                while "alpha__lookup-plain" not in names:
                    await changed.receive()
                    names = {tool.name for tool in (await client.list_tools()).tools}

    assert "alpha__echo" in names
    assert not any(TOKEN in name for name in names)


@pytest.mark.parametrize("offset", [0, 1, 2, 5])
def test_base64_found_at_any_offset(offset: int) -> None:
    scan = SecretScan([found for found in [secret("the token", TOKEN)] if found is not None])
    content = b"x" * offset + f"API_TOKEN={TOKEN}\n".encode()

    assert scan.find({"blob": base64.b64encode(content).decode()}) == "the token"
    assert scan.find({"text": f"token: {TOKEN}"}) == "the token"
    assert scan.find({"text": base64.b64encode(b"x" * offset + b"no token here").decode()}) is None


def test_binary_key_found_in_hex_and_base64() -> None:
    key = bytes(range(32))
    found = secret("the key", key)

    assert found is not None
    scan = SecretScan([found])
    assert scan.find(["...", {"data": base64.b64encode(key).decode()}]) == "the key"
    assert scan.find(f"key={key.hex().upper()}") == "the key"
    assert secret("short", "1") is None


def test_keys_found_as_files_show_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    load_or_create_key(state / "approval.key")
    (state / "audit.key").write_text("cd" * 32 + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[gateway]\nstate_dir = "{state}"\n')
    scan = SecretScan(gateway_secrets(load_config(policy), environ={}))
    approval_file = (state / "approval.key").read_bytes()

    assert scan.find(f"+{approval_file.decode()}") == "mcp-guard's approval key"
    assert scan.find(base64.b64encode(approval_file).decode()) == "mcp-guard's approval key"
    assert scan.find("cd" * 32) == "mcp-guard's audit key"
    assert scan.find("ef" * 32) is None
