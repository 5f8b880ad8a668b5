"""Progress reaches only the caller that asked, and cancellation reaches only the server running the call."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client
from support import ERAS, fixture_server, http_gateway, read_records, stdio_gateway, wait_until, write_policy

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ERAS)
async def test_cancel_reaches_only_running_server(tmp_path: Path, mode: str) -> None:
    alpha_log, beta_log = tmp_path / "alpha.jsonl", tmp_path / "beta.jsonl"
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha", record=alpha_log), "beta": fixture_server("beta", record=beta_log)},
    )

    async with stdio_gateway(policy, mode) as client, anyio.create_task_group() as tasks:
        # A 2026-07-28 client sends without a handshake, so wait until the gateway responds.
        await client.list_tools()
        beta_results = []

        async def busy_beta() -> None:
            beta_results.append(await client.call_tool("beta__slow", {"seconds": 2, "steps": 2}))

        tasks.start_soon(busy_beta)
        with anyio.move_on_after(0.8):
            await client.call_tool("alpha__slow", {"seconds": 30, "steps": 3})
        await wait_until(lambda: any(r["event"] == "cancelled" for r in read_records(alpha_log)), 5, "cancel")

    alpha_events = read_records(alpha_log)
    beta_events = read_records(beta_log)
    call = next(r for r in alpha_events if r["event"] == "call" and r["tool"] == "slow")
    cancelled = next(r for r in alpha_events if r["event"] == "cancelled")
    assert cancelled["request_id"] == call["request_id"]
    assert [r["event"] for r in beta_events if r["tool"] == "slow"] == ["call", "finished"]
    assert beta_results[0].content[0].text == "done after 2 steps"


@pytest.mark.parametrize("mode", ERAS)
async def test_progress_reaches_its_caller(tmp_path: Path, mode: str) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    received: dict[str, list[tuple[float, float | None]]] = {"first": [], "second": []}

    async def call(url: str, who: str, steps: int) -> None:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            received[who].append((progress, total))

        async with Client(url, mode=mode) as client:
            # Both clients send the same requests in the same order, so their request ids, and
            # with them the progress tokens the SDK derives from them, are the same.
            await client.call_tool(
                "alpha__slow", {"seconds": 0.6, "steps": steps}, progress_callback=on_progress
            )

    with http_gateway(policy, tmp_path) as (_process, url):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, url, "first", 3)
            tasks.start_soon(call, url, "second", 5)

    assert [total for _progress, total in received["first"]] == [3, 3, 3]
    assert [total for _progress, total in received["second"]] == [5, 5, 5, 5, 5]
    assert [progress for progress, _total in received["second"]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("mode", ERAS)
async def test_progress_over_stdio(tmp_path: Path, mode: str) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with stdio_gateway(policy, mode) as client:
        await client.call_tool("alpha__slow", {"seconds": 0.3, "steps": 2}, progress_callback=on_progress)

    assert messages == ["step 1 of 2", "step 2 of 2"]
