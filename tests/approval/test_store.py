"""The approval store on a real SQLite file: requests, decisions and grants that are used exactly once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from mcp_guard.approval.store import ApprovalRequest, ApprovalStore, CallBinding, NotPending, Scope

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
BINDING = CallBinding(
    client="agent",
    session="session-1",
    server="files",
    tool="write_file",
    exported="files__write_file",
    rule="writes need approval",
    arguments_digest="sha256:" + "a" * 64,
    definition_digest="sha256:" + "d" * 64,
    policy_digest="sha256:" + "p" * 64,
)


async def opened(store: ApprovalStore, binding: CallBinding = BINDING, now: float = T0) -> ApprovalRequest:
    result = await store.open_request(binding, "path: /tmp/a", now=now, wait_seconds=600, max_pending=5)
    assert not isinstance(result, int)
    return result[0]


async def approve(
    store: ApprovalStore,
    request: ApprovalRequest,
    *,
    approve: bool = True,
    scope: Scope = "once",
    valid_seconds: float = 600.0,
) -> ApprovalRequest:
    return await store.decide(
        request.id,
        approve=approve,
        scope=scope,
        valid_seconds=valid_seconds,
        by="operator",
        channel="command line",
        now=T0 + 1,
    )


async def test_identical_requests_share_one_entry(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        first = await opened(store)
        again = await store.open_request(BINDING, "x", now=T0 + 5, wait_seconds=600, max_pending=5)
        other = await opened(store, replace(BINDING, arguments_digest="sha256:" + "b" * 64))
    assert not isinstance(again, int)
    assert again == (first, False)
    assert other.id != first.id


@pytest.mark.attack("approval flood")
async def test_pending_cap_returns_the_count(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        for index in range(3):
            await opened(store, replace(BINDING, arguments_digest=f"sha256:{index:064d}"))
        over = await store.open_request(
            replace(BINDING, arguments_digest="sha256:" + "f" * 64),
            "x",
            now=T0,
            wait_seconds=600,
            max_pending=3,
        )
    assert over == 3


@pytest.mark.attack("approval grant replay", attempts=50)
async def test_once_grant_taken_exactly_once(tmp_path: Path) -> None:
    taken: list[ApprovalRequest | None] = []
    async with ApprovalStore.in_state_dir(tmp_path) as first, ApprovalStore.in_state_dir(tmp_path) as second:
        await approve(first, await opened(first))

        async def take(store: ApprovalStore) -> None:
            taken.append(await store.take_grant(BINDING, T0 + 2))

        async with anyio.create_task_group() as tasks:
            for index in range(50):
                tasks.start_soon(take, first if index % 2 else second)
    assert sum(grant is not None for grant in taken) == 1


@pytest.mark.attack("approval grant reused for another call", attempts=5)
async def test_grant_binds_every_part_of_the_call(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        await approve(store, await opened(store), scope="minutes")
        for changed in (
            replace(BINDING, client="other"),
            replace(BINDING, tool="delete_file"),
            replace(BINDING, arguments_digest="sha256:" + "b" * 64),
            replace(BINDING, definition_digest="sha256:" + "e" * 64),
            replace(BINDING, policy_digest="sha256:" + "q" * 64),
        ):
            assert await store.take_grant(changed, T0 + 2) is None
        assert await store.take_grant(BINDING, T0 + 2) is not None


@pytest.mark.attack("approval after its time ran out")
async def test_minutes_grant_serves_repeats_until_it_expires(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        await approve(store, await opened(store), scope="minutes", valid_seconds=60.0)
        uses = [await store.take_grant(BINDING, T0 + 2 + step) for step in range(3)]
        late = await store.take_grant(BINDING, T0 + 62)
        [expired] = await store.listing(T0 + 62, ("expired",))
    assert all(grant is not None for grant in uses)
    assert late is None
    assert expired.uses == 3


@pytest.mark.attack("approval grant reused for another call", attempts=2)
async def test_session_grant_stays_in_session(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        await approve(store, await opened(store), scope="session")
        other_arguments = replace(BINDING, arguments_digest="sha256:" + "b" * 64)
        assert await store.take_grant(other_arguments, T0 + 2) is not None
        assert await store.take_grant(replace(other_arguments, session="session-2"), T0 + 2) is None
        assert await store.take_grant(replace(other_arguments, session=None), T0 + 2) is None


@pytest.mark.attack("call runs after a person denied it", attempts=2)
async def test_decided_request_cannot_be_decided_again(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        request = await opened(store)
        await approve(store, request, approve=False)
        with pytest.raises(NotPending, match="is denied, not pending"):
            await approve(store, request)
        with pytest.raises(NotPending, match="does not exist"):
            await store.decide(
                "guessed", approve=True, scope="once", valid_seconds=1, by="x", channel="command line", now=T0
            )
        assert await store.take_grant(BINDING, T0 + 2) is None


@pytest.mark.attack("approval after its time ran out")
async def test_unanswered_request_expires(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        request = await opened(store)
        assert await store.pending_count("agent", T0 + 599) == 1
        assert await store.pending_count("agent", T0 + 601) == 0
        with pytest.raises(NotPending, match="is expired"):
            await store.decide(
                request.id,
                approve=True,
                scope="once",
                valid_seconds=1,
                by="x",
                channel="command line",
                now=T0 + 601,
            )


@pytest.mark.attack("state files readable by other users")
async def test_store_file_is_private(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path / "state"):
        pass
    assert (tmp_path / "state" / "approvals.sqlite3").stat().st_mode & 0o077 == 0


@pytest.mark.attack("approval grant reused for another call")
async def test_session_grant_covers_its_own_rule_only(tmp_path: Path) -> None:
    async with ApprovalStore.in_state_dir(tmp_path) as store:
        await approve(store, await opened(store), scope="session")
        stricter = replace(BINDING, rule="writes to /etc need approval")
        assert await store.take_grant(stricter, T0 + 2) is None
        assert await store.take_grant(BINDING, T0 + 2) is not None
