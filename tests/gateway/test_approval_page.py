"""The approval page on 127.0.0.1, opened by a person's browser (headless Chromium) and by plain HTTP.

A client without elicitation gets a one-time link in its "approval pending"
error. Pressing a button on that page decides the request; the client's retry
then runs. The link works once, a guessed link shows nothing, opening the page
decides nothing, and the page serves only requests addressed to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from anyio.streams.text import TextReceiveStream
from support import (
    ROOT,
    fixture_server,
    read_records,
    stdio_gateway,
    wait_until,
    webhook_receiver,
    write_policy,
)

pytestmark = pytest.mark.anyio

BROWSER_DRIVER = ROOT / "tests" / "node" / "approve_in_browser.mjs"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core"
ALLOW = {"name": "allow", "clients": ["*"], "server": "*", "tools": ["*"], "decision": "auto", "write": True}
WRITES = {**ALLOW, "name": "writes need approval", "tools": ["write_file"], "decision": "approve"}
WRITE_A = {"path": "/tmp/a.txt", "content": "hello <b>world</b>"}


WEBHOOK_VARIABLE = "TEST_APPROVAL_WEBHOOK"


def page_policy(folder: Path, record: Path) -> Path:
    return write_policy(
        folder,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[ALLOW, WRITES],
        approval={"page_port": 0, "webhook_url_from": WEBHOOK_VARIABLE},
    )


@asynccontextmanager
async def page_gateway(tmp_path: Path, record: Path) -> AsyncIterator[tuple[Any, list[dict[str, Any]]]]:
    """Start a gateway with the approval page; yield its client and the webhook messages, which carry the links.

    The page's links reach only the operator (the log and the webhook), never the client.
    """
    with webhook_receiver() as (url, received):
        async with stdio_gateway(page_policy(tmp_path, record), env={WEBHOOK_VARIABLE: url}) as client:
            yield client, received


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def link_of(received: list[dict[str, Any]]) -> str:
    """Return the page link of the newest request, from the webhook messages."""
    await wait_until(lambda: received, message="the webhook message with the link")
    link = received[-1]["link"]
    assert isinstance(link, str)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/approve/[A-Za-z0-9_-]+", link)
    return link


def writes(record: Path) -> list[dict[str, Any]]:
    return [event["arguments"] for event in read_records(record) if event["event"] == "call"]


async def open_in_browser(url: str, choice: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or shutil.which("chromium") is None or not PLAYWRIGHT.exists():
        pytest.fail("the page test needs node, Debian's chromium package and `make test`'s Node packages")
    completed = await anyio.run_process([node, str(BROWSER_DRIVER), url, choice], cwd=ROOT, check=False)
    output: dict[str, Any] = json.loads(completed.stdout)
    assert "fatal" not in output, output
    return output


@pytest.mark.slow
@pytest.mark.legitimate("approval page misuse")
async def test_approving_in_the_browser_lets_the_retry_run(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with page_gateway(tmp_path, record) as (client, received):
        pending = await client.call_tool("alpha__write_file", WRITE_A)
        browser = await open_in_browser(await link_of(received), "approve once")
        retried = await client.call_tool("alpha__write_file", WRITE_A)

    assert "Approval pending" in text_of(pending)
    assert browser["first"]["status"] == 200
    assert "Tool\nwrite_file (called as alpha__write_file)" in browser["first"]["text"]
    assert 'content: "hello <b>world</b>"' in browser["first"]["text"]  # shown as text, not markup
    assert browser["after"]["title"] == "mcp-guard: Approved"
    assert browser["again"]["status"] == 404  # the link worked once
    assert browser["external_requests"] == []
    assert retried.is_error is False
    assert [call["content"] for call in writes(record)] == [WRITE_A["content"]]


@pytest.mark.slow
@pytest.mark.attack("call runs after a person denied it")
async def test_denying_in_the_browser_blocks_call(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with page_gateway(tmp_path, record) as (client, received):
        await client.call_tool("alpha__write_file", WRITE_A)
        browser = await open_in_browser(await link_of(received), "deny")
        retried = await client.call_tool("alpha__write_file", WRITE_A)

    assert browser["after"]["title"] == "mcp-guard: Denied"
    assert retried.is_error is True
    assert writes(record) == []


@pytest.mark.attack("approval page misuse", attempts=3)
async def test_page_rejects_bad_requests(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"

    async with page_gateway(tmp_path, record) as (client, received):
        await client.call_tool("alpha__write_file", WRITE_A)
        link = await link_of(received)
        base = link.rsplit("/approve/", 1)[0]
        async with httpx2.AsyncClient() as http:
            opened = await http.get(link)
            guessed = await http.get(f"{base}/approve/{'A' * 43}")
            foreign = await http.get(link, headers={"Host": "attacker.example:80"})
            nonsense = await http.post(link, data={"decision": "approve forever"})
            still_open = await http.get(link)
        retried = await client.call_tool("alpha__write_file", WRITE_A)

    assert opened.status_code == 200
    assert "default-src 'none'" in opened.headers["content-security-policy"]
    assert opened.headers["x-frame-options"] == "DENY"
    assert guessed.status_code == 404
    assert foreign.status_code == 400
    assert nonsense.status_code == 400
    assert still_open.status_code == 200  # neither opening nor a stray post decided anything
    assert "Approval pending" in text_of(retried)
    assert writes(record) == []


async def test_busy_page_port_stops_gateway(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        policy = write_policy(
            tmp_path, {"alpha": fixture_server("alpha")}, rules=[ALLOW], approval={"page_port": port}
        )
        completed = await anyio.run_process(
            [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)], cwd=ROOT, check=False
        )

    stderr = completed.stderr.decode()
    assert completed.returncode == 1
    assert f"The approval page cannot listen on 127.0.0.1:{port}" in stderr
    assert "approval.page_port" in stderr
    assert "Traceback" not in stderr


class RawClient:
    """A handshake-era client spoken by hand over stdio, so it can declare URL-mode elicitation alone."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process = process
        self._lines = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send((json.dumps(message) + "\n").encode())

    async def receive(self) -> dict[str, Any]:
        while "\n" not in self._buffer:
            self._buffer += await self._lines.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    async def receive_until(self, predicate: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Return the first message that matches, and every message before it."""
        seen = []
        with anyio.fail_after(30):
            while True:
                message = await self.receive()
                if predicate(message):
                    return message, seen
                seen.append(message)


@pytest.mark.parametrize("decision", ["approve once", "deny"])
@pytest.mark.attack("call runs after a person denied it", params={"decision": "deny"})
@pytest.mark.legitimate("approval page misuse", params={"decision": "approve once"})
async def test_url_mode_decides_on_page(tmp_path: Path, decision: str) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = page_policy(tmp_path, record)
    command = [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)]

    # The link reaches this client through URL-mode elicitation; the webhook is not needed here.
    environment = {**os.environ, WEBHOOK_VARIABLE: "http://127.0.0.1:9/unused"}
    async with await anyio.open_process(command, cwd=ROOT, stderr=None, env=environment) as process:
        client = RawClient(process)
        await client.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"elicitation": {"url": {}}},
                    "clientInfo": {"name": "url-only-client", "version": "1"},
                },
            }
        )
        await client.receive_until(lambda message: message.get("id") == 1)
        await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "alpha__write_file", "arguments": WRITE_A}
        await client.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        question, _ = await client.receive_until(
            lambda message: message.get("method") == "elicitation/create"
        )
        await client.send({"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept"}})
        async with httpx2.AsyncClient() as http:
            decided = await http.post(question["params"]["url"], data={"decision": decision})
        result, before = await client.receive_until(lambda message: message.get("id") == 2)
        await process.stdin.aclose()  # type: ignore[union-attr]

    assert question["params"]["mode"] == "url"
    assert question["params"]["url"].startswith("http://127.0.0.1:")
    assert decided.status_code == 200
    assert any(message.get("method") == "notifications/elicitation/complete" for message in before)
    if decision == "approve once":
        assert result["result"].get("isError") is not True
        assert writes(record) == [WRITE_A]
    else:
        assert result["result"]["isError"] is True
        assert "denied it on the approval page" in result["result"]["content"][0]["text"]
        assert writes(record) == []
