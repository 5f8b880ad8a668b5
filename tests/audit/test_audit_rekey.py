"""`mcp-guard audit rekey`: the trail is checked with the old key and signed again with a new one.

A key that leaked (committed to git, shown in a log) lets its holder write rows that verify.
Once replaced, it no longer does, and the rows written before stay verifiable.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from support import fixture_server, run_audit, stdio_gateway, write_policy

from mcp_guard.audit import AuditPaths, CallIntent, CallOutcome, SqliteAuditStore
from mcp_guard.audit.chain import row_hash
from mcp_guard.audit.files import load_audit_key
from mcp_guard.audit.schema import HASHED_COLUMNS, INSERT_ROW, SELECT_ROWS, split_row
from mcp_guard.audit.sqlite.rekey import key_path_next, rekey_trail
from mcp_guard.errors import AuditUnavailable

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]
NEW_KEY = bytes(range(100, 132))


@pytest.fixture(autouse=True)
def no_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GUARD_AUDIT_KEY", raising=False)


@pytest.fixture
async def trail(state_dir: Path, make_intent: IntentFactory, make_outcome: OutcomeFactory) -> list[str]:
    """Record four calls under the key file, prune the first, and return the call ids kept."""
    call_ids = []
    async with SqliteAuditStore.in_state_dir(state_dir) as store:
        for tool in ("read_file", "write_file", "list_files", "search"):
            intent = make_intent(tool=tool)
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id))
            call_ids.append(intent.call_id)
        await store.prune(max_rows=6)
    return call_ids[1:]


async def verify_with(state_dir: Path, key: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    with monkeypatch.context() as patch:
        patch.setenv("MCP_GUARD_AUDIT_KEY", key.hex())
        status, _ = await run_audit(state_dir, "verify")
    return status


def forge_row(paths: AuditPaths, key: bytes) -> None:
    """Append a copy of the newest row as a new row, chained and signed with `key`."""
    with sqlite3.connect(paths.database) as db:
        fields, _, stored_hash = split_row(db.execute(f"{SELECT_ROWS} ORDER BY id DESC LIMIT 1").fetchone())
        forged = {**fields, "id": fields["id"] + 1, "call_id": "forged-call", "kind": "intent"}
        values = [forged[column] for column in HASHED_COLUMNS]
        db.execute(INSERT_ROW, [*values, stored_hash, row_hash(key, stored_hash, forged)])


async def test_rekey_replaces_key_file(
    trail: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    old_key = load_audit_key(paths.key, None)
    before = await run_audit(state_dir, "search")

    status, output = await run_audit(state_dir, "rekey")

    new_key = load_audit_key(paths.key, None)
    assert status == 0
    assert output == (
        "Checked the trail with the old key and signed its 6 rows again with the new key.\n"
        f"The new key is in {paths.key}. The old key no longer verifies the trail; delete every copy of it.\n"
    )
    assert new_key != old_key
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert not key_path_next(paths.key).exists()
    assert await run_audit(state_dir, "verify") == (
        0,
        "The audit trail is intact: 6 rows verified (rows 3 to 8).\n",
    )
    assert await verify_with(state_dir, old_key, monkeypatch) == 2
    assert await run_audit(state_dir, "search") == before


@pytest.mark.attack("audit trail forged with a leaked key", attempts=2)
async def test_leaked_key_cannot_forge_after_rekey(
    trail: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    leaked = load_audit_key(paths.key, None)
    await run_audit(state_dir, "rekey")
    new_key = load_audit_key(paths.key, None)

    forge_row(paths, leaked)

    assert await verify_with(state_dir, new_key, monkeypatch) == 2
    # The same forgery with the key in use verifies: this is what a leaked key allows.
    with sqlite3.connect(paths.database) as db:
        db.execute("DELETE FROM audit_rows WHERE call_id = 'forged-call'")
    forge_row(paths, new_key)
    assert await verify_with(state_dir, new_key, monkeypatch) == 0


@pytest.mark.attack("audit trail forged with a leaked key", attempts=1)
async def test_changed_row_is_not_signed_again(
    trail: list[str], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    key_before = paths.key.read_bytes()
    with sqlite3.connect(paths.database) as db:
        db.execute("UPDATE audit_rows SET tool = 'harmless' WHERE id = 5")
        hashes_before = db.execute("SELECT row_hash FROM audit_rows ORDER BY id").fetchall()

    status, output = await run_audit(state_dir, "rekey")

    assert status == 2
    assert output == ""
    assert capsys.readouterr().err == (
        "The audit trail is broken at row 5: the row does not match its hash: a field was changed, or the "
        "key is not the one that wrote it; the key was not replaced, because signing the trail again would "
        "make changed rows look genuine.\n"
    )
    assert paths.key.read_bytes() == key_before
    assert not key_path_next(paths.key).exists()
    with sqlite3.connect(paths.database) as db:
        assert db.execute("SELECT row_hash FROM audit_rows ORDER BY id").fetchall() == hashes_before


async def test_interrupted_rekey_is_finished_by_the_next_run(
    trail: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run stopped after the commit, before the head file and the key file were replaced.
    paths = AuditPaths.in_state_dir(state_dir)
    old_key = load_audit_key(paths.key, None)
    key_path_next(paths.key).write_text(NEW_KEY.hex() + "\n")
    old_head = paths.head.read_bytes()
    rekey_trail(paths, old_key, NEW_KEY)
    paths.head.write_bytes(old_head)

    status, output = await run_audit(state_dir, "rekey")

    assert status == 0
    assert output.startswith("An earlier run had already signed the 6 rows with the new key.\n")
    assert load_audit_key(paths.key, None) == NEW_KEY
    assert await verify_with(state_dir, NEW_KEY, monkeypatch) == 0


async def test_rekey_with_key_in_variable(
    trail: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    old_key = load_audit_key(paths.key, None)
    paths.key.unlink()
    monkeypatch.setenv("MCP_GUARD_AUDIT_KEY", old_key.hex())

    without_new_key = await run_audit(state_dir, "rekey")
    message = capsys.readouterr().err
    monkeypatch.setenv("NEXT_AUDIT_KEY", NEW_KEY.hex())
    status, output = await run_audit(state_dir, "rekey", "--new-key-env", "NEXT_AUDIT_KEY")

    assert without_new_key == (1, "")
    assert message == (
        "The audit key comes from $MCP_GUARD_AUDIT_KEY, which mcp-guard cannot change. Put a new key "
        "(64 hex digits) in another variable and pass its name with --new-key-env.\n"
    )
    assert status == 0
    assert output.endswith(
        "Set $MCP_GUARD_AUDIT_KEY to the new key (the value of $NEXT_AUDIT_KEY) before the gateway starts "
        "again: the old key no longer verifies the trail.\n"
    )
    assert not paths.key.exists()
    assert await verify_with(state_dir, NEW_KEY, monkeypatch) == 0
    assert await verify_with(state_dir, old_key, monkeypatch) == 2


async def test_rekey_refused_while_gateway_writes(
    trail: list[str], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    key_before = paths.key.read_bytes()

    async with SqliteAuditStore.in_state_dir(state_dir):
        status, _ = await run_audit(state_dir, "rekey")
    message = capsys.readouterr().err
    after_stop = await run_audit(state_dir, "rekey")

    assert status == 1
    assert message.startswith("The audit trail cannot be used: another process (PID ")
    assert message.endswith("Stop the gateway that uses this state directory, then replace the key.\n")
    # Nothing was changed or left behind, so the next run starts afresh.
    assert after_stop[0] == 0
    assert after_stop[1].startswith("Checked the trail with the old key and signed its 6 rows again")
    assert paths.key.read_bytes() != key_before


async def test_rekey_without_key_names_the_file(
    state_dir: Path, make_intent: IntentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with SqliteAuditStore.in_state_dir(state_dir) as store:
        await store.record_intent(make_intent())
    paths = AuditPaths.in_state_dir(state_dir)
    paths.key.unlink()

    status, _ = await run_audit(state_dir, "rekey")

    assert status == 1
    assert capsys.readouterr().err == (
        f"The audit trail cannot be used: no audit key at {paths.key} and $MCP_GUARD_AUDIT_KEY is not set.\n"
    )


async def mcp_guard(*args: str) -> tuple[int, str]:
    """Run the `mcp-guard` command line and return its exit status with its output and errors."""
    environment = {name: value for name, value in os.environ.items() if name != "MCP_GUARD_AUDIT_KEY"}
    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", *args], check=False, env=environment
    )
    return completed.returncode, (completed.stdout + completed.stderr).decode()


async def test_gateway_records_on_after_rekey(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    key_path = tmp_path / "state" / "audit.key"
    async with stdio_gateway(policy) as client:
        await client.call_tool("alpha__echo", {"text": "before"})
    old_key = key_path.read_text()

    rekeyed = await mcp_guard("audit", "--config", str(policy), "rekey")
    async with stdio_gateway(policy) as client:
        after = await client.call_tool("alpha__echo", {"text": "after"})
    verified = await mcp_guard("audit", "--config", str(policy), "verify")

    assert rekeyed[0] == 0
    assert rekeyed[1].startswith("Checked the trail with the old key and signed its 2 rows again")
    assert key_path.read_text() != old_key
    assert after.content[0].text == "after"
    assert verified == (0, "The audit trail is intact: 4 rows verified (rows 1 to 4).\n")


async def test_new_key_same_as_old_refused(
    trail: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = AuditPaths.in_state_dir(state_dir)
    monkeypatch.setenv("NEXT_AUDIT_KEY", paths.key.read_text().strip())

    status, _ = await run_audit(state_dir, "rekey", "--new-key-env", "NEXT_AUDIT_KEY")

    assert status == 1
    assert capsys.readouterr().err == (
        "$NEXT_AUDIT_KEY contains the audit key in use, not a new one. Make one with `openssl rand -hex 32` "
        "and put it in $NEXT_AUDIT_KEY; nothing was changed.\n"
    )
    assert not key_path_next(paths.key).exists()


@pytest.mark.parametrize(
    ("pruned", "message"),
    [
        (
            False,
            "The audit trail is broken at row 1: the first row does not match its hash: the audit key is not "
            "the one that wrote the trail, or the row was changed.",
        ),
        (
            # The anchor that pruning left is checked before the rows.
            True,
            "The audit trail is broken at an end of the trail: the pruning anchor does not match its MAC: the "
            "audit key is not the one that wrote the trail, or the anchor was edited.",
        ),
    ],
)
async def test_wrong_key_named_first(
    state_dir: Path,
    make_intent: IntentFactory,
    make_outcome: OutcomeFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pruned: bool,
    message: str,
) -> None:
    async with SqliteAuditStore.in_state_dir(state_dir) as store:
        for _ in range(2):
            intent = make_intent()
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id))
        if pruned:
            await store.prune(max_rows=2)
    monkeypatch.setenv("MCP_GUARD_AUDIT_KEY", NEW_KEY.hex())

    status, _ = await run_audit(state_dir, "verify")

    assert status == 2
    assert capsys.readouterr().err.startswith(message)


async def test_no_new_key_beside_existing_trail(trail: list[str], state_dir: Path) -> None:
    # A client that starts the gateway without the key's variable must not get a new key.
    paths = AuditPaths.in_state_dir(state_dir)
    paths.key.unlink()

    with pytest.raises(AuditUnavailable) as raised:
        SqliteAuditStore.in_state_dir(state_dir)

    assert not paths.key.exists()
    assert raised.value.reason == (
        f"the audit key is missing: no file {paths.key} and $MCP_GUARD_AUDIT_KEY is not set, though "
        f"{paths.database} contains a trail"
    )
    assert raised.value.fix == (
        f"Give the gateway the key that wrote the trail ($MCP_GUARD_AUDIT_KEY, or the file {paths.key}). "
        "To start a new trail instead, move audit.sqlite3 and audit.head out of the state directory."
    )
