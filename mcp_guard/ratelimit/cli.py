"""`mcp-guard limits`: the current usage of every counted limit, per client.

It reads the SQLite file of the state directory or the shared Redis, as the
running gateways write them, and takes nothing. The memory store lives inside
a gateway process, so there is nothing to read from outside.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

from mcp_guard.config.models import GatewayConfig
from mcp_guard.ratelimit import Limiter, LimitStoreUnavailable, open_limit_store
from mcp_guard.ratelimit.limiter import Meter
from mcp_guard.ratelimit.memory import MemoryLimitStore
from mcp_guard.ratelimit.store import LimitStore, WindowCharge
from mcp_guard.state.clock import SteadyClock

_WINDOWS = {60.0: "minute", 3600.0: "hour", 86400.0: "day"}
HEADER = ("CLIENT", "LIMIT", "DIMENSION", "COUNTED PER", "USED", "OF")


def add_limits_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `limits` to the command line."""
    limits = subparsers.add_parser("limits", help="show each client's current usage of its rate limits")
    limits.add_argument("--client", help="show only this client")


async def run_limits_command(
    config: GatewayConfig,
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Print the usage table and return the exit status."""
    out = stdout or sys.stdout
    if config.limits.store == "memory":
        print(
            'The policy keeps rate-limit counts in memory (limits.store = "memory"), inside each gateway '
            'process, where this command cannot read them. Use store = "sqlite" or "redis" to see them.',
            file=sys.stderr,
        )
        return 1

    password = config.limits.redis_password_from
    variables = os.environ if environ is None else environ
    if config.limits.store == "redis" and password is not None and password not in variables:
        print(
            f"limits.redis_password_from: environment variable {password} is not set; export it to read "
            "the counts from Redis",
            file=sys.stderr,
        )
        return 2

    clients = [args.client] if args.client else list(config.clients)
    unknown = [name for name in clients if name not in config.clients]
    if unknown:
        defined = ", ".join(config.clients) or "none"
        print(
            f"Client {unknown[0]!r} not found in the policy file; defined clients: {defined}", file=sys.stderr
        )
        return 2

    try:
        rows = await _usage_rows(config, clients, environ)
    except LimitStoreUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if not rows:
        print("No rate limit applies to these clients; add [[limits.rules]] to the policy file.", file=out)
        return 0
    _print_table([HEADER, *rows], out)
    return 0


async def _usage_rows(
    config: GatewayConfig, clients: list[str], environ: Mapping[str, str] | None
) -> list[tuple[str, ...]]:
    """Return one table row per counted dimension of every limit that applies to each of `clients`."""
    from mcp_guard.ratelimit.sqlite import sqlite_store_path  # imported where used, as open_limit_store does

    clock = SteadyClock()
    state_dir = Path(config.gateway.state_dir)
    rows: list[tuple[str, ...]] = []
    async with AsyncExitStack() as stack:
        store: LimitStore
        if config.limits.store == "sqlite" and not sqlite_store_path(state_dir).exists():
            # No gateway has counted anything yet: an empty store shows the zeros, and no file is created.
            store = MemoryLimitStore()
        else:
            store = await stack.enter_async_context(
                open_limit_store(config.limits, state_dir, clock=clock, environ=environ)
            )
        limiter = Limiter(config.limits, config.clients, store)
        now = clock()
        for client in clients:
            meters = limiter.standing_meters(client, config.clients[client].organisation)
            used = await store.usage([meter.charge for meter in meters], now)
            rows += [_row(client, meter, amount) for meter, amount in zip(meters, used, strict=True)]
    return rows


def _row(client: str, meter: Meter, used: float) -> tuple[str, ...]:
    charge = meter.charge
    dimension = meter.dimension
    if isinstance(charge, WindowCharge) and charge.period not in _WINDOWS:
        dimension += f" ({charge.period:g} s)"
    per = {"client": "client", "organisation": "organisation", "global": "all clients"}[meter.per]
    return (client, meter.limit, dimension, per, _number(used), _number(charge.limit))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out
        )
