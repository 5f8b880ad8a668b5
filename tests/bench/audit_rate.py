"""Audit rows per second: many concurrent calls recording intents and outcomes through group commit.

Each simulated call records its intent and then its outcome, as the gateway does, against a real
SQLite store in a scratch folder, so the number includes hashing, redaction and commits.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from mcp_guard.audit import AuditedCall, CallIntent, SqliteAuditStore, new_call_id

# Each writer records this many calls; 50 writers make 10,000 calls and 20,000 rows.
CALLS_PER_WRITER = 200
WRITERS = 50


@dataclass(frozen=True)
class AuditRate:
    """Audit rows written per second, with the settings that produced them."""

    writers: int
    rows: int
    seconds: float
    power_safe: bool

    @property
    def rows_per_second(self) -> float:
        """Rows committed per second of wall-clock time."""
        return self.rows / self.seconds


async def measure_audit_rate(power_safe: bool) -> AuditRate:
    """Record WRITERS x CALLS_PER_WRITER calls concurrently and time it."""
    with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-audit-") as scratch:
        store = SqliteAuditStore.in_state_dir(Path(scratch), key_env_var=None, power_safe=power_safe)
        async with store:
            started = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                for writer in range(WRITERS):
                    tasks.start_soon(_write_calls, store, writer)
            seconds = time.perf_counter() - started
    return AuditRate(WRITERS, 2 * WRITERS * CALLS_PER_WRITER, seconds, power_safe)


async def _write_calls(store: SqliteAuditStore, writer: int) -> None:
    for number in range(CALLS_PER_WRITER):
        intent = CallIntent(
            call_id=new_call_id(),
            client="bench",
            protocol_era="2025-11-25",
            server="fixture",
            tool="echo",
            arguments={"text": f"writer {writer} call {number}"},
            decision="auto",
            rule="benchmark-echo",
        )
        async with AuditedCall(store, intent) as call:
            call.finish("succeeded", preview="ok", result_bytes=2)


def render_audit_rates(rates: list[AuditRate]) -> str:
    """Return the Markdown table of audit write rates."""
    lines = [
        "### Audit trail write rate",
        "",
        f"{WRITERS} concurrent writers, {CALLS_PER_WRITER} calls each, an intent and an outcome row per call.",
        "",
        "| power_safe | rows | seconds | rows/s |",
        "|---|--:|--:|--:|",
    ]
    for rate in rates:
        lines.append(
            f"| {rate.power_safe} | {rate.rows} | {rate.seconds:.2f} | {rate.rows_per_second:,.0f} |"
        )
    return "\n".join(lines)
