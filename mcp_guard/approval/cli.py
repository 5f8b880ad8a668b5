"""`mcp-guard approvals`: list the calls that wait for a person, and approve or deny them.

A client without in-call elicitation receives an error stating that its call
waits for approval, with the request id. The operator approves it here (once, or for the same call
for some minutes), and the client's retry of exactly that call then runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from mcp_guard.approval.display import minutes_text
from mcp_guard.approval.store import ApprovalRequest, ApprovalStore, ApprovalStoreError, NotPending, Status
from mcp_guard.config.models import GatewayConfig
from mcp_guard.launcher import policy_command_line
from mcp_guard.pinning.cli import operator_name


def add_approvals_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `approvals list | approve | deny` to the command line."""
    approvals = subparsers.add_parser("approvals", help="list, approve or deny calls that wait for a person")
    commands = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = commands.add_parser("list", help="list the requests that wait for a decision")
    listing.add_argument("--all", action="store_true", help="also list decided, used and expired requests")
    approve = commands.add_parser("approve", help="approve a waiting request, so the client's retry runs")
    approve.add_argument(
        "request_id", help="the request id, as the client's error or `approvals list` shows it"
    )
    approve.add_argument(
        "--for-minutes",
        type=_minutes,
        help="let exactly this call run again for this many minutes (default: once)",
    )
    approve.add_argument(
        "--by", default=operator_name(), help="name recorded as the approver (default: your user name)"
    )
    deny = commands.add_parser("deny", help="deny a waiting request")
    deny.add_argument("request_id", help="the request id")
    deny.add_argument("--by", default=operator_name(), help="name recorded as the one who denied it")


async def run_approvals_command(
    config: GatewayConfig, args: argparse.Namespace, *, stdout: TextIO | None = None
) -> int:
    """Run one `approvals` command and return the exit status."""
    out = stdout or sys.stdout
    now = time.time()
    try:
        async with ApprovalStore.in_state_dir(Path(config.gateway.state_dir)) as store:
            if args.approvals_command == "list":
                statuses: Sequence[Status] = (
                    ("pending", "approved", "denied", "used", "expired") if args.all else ("pending",)
                )
                requests = await store.listing(now, statuses)
                if not requests:
                    print(_nothing_listed(args.all), file=out)
                    return 0
                _print_requests(requests, now, out)
                return 0
            approve = args.approvals_command == "approve"
            minutes = getattr(args, "for_minutes", None)
            request = await store.decide(
                args.request_id,
                approve=approve,
                scope="minutes" if minutes else "once",
                valid_seconds=(minutes or 0) * 60.0 or config.approval.pending_seconds,
                by=args.by,
                channel="command line",
                now=now,
            )
    except ApprovalStoreError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except NotPending as exc:
        print(exc.message(f"{approvals_command(getattr(args, 'config', None))} list"), file=sys.stderr)
        return 1
    if approve:
        lasting = f"for {minutes_text(minutes)}" if minutes else "once"
        print(
            f"Approved {request.id} ({lasting}): the client's retry of {request.binding.exported} will run.",
            file=out,
        )
    else:
        print(f"Denied {request.id}: {request.binding.exported} will not run.", file=out)
    return 0


def approvals_command(policy_path: str | None) -> str:
    """Return the `mcp-guard approvals` command line for this policy file, ready to paste."""
    return policy_command_line("approvals", policy_path)


def _nothing_listed(listed_all: bool) -> str:
    if listed_all:
        return "No approval requests."
    return "No approval request is pending. `approvals list --all` also lists decided, used and expired ones."


def _print_requests(requests: list[ApprovalRequest], now: float, out: TextIO) -> None:
    for request in requests:
        binding = request.binding
        created = datetime.fromtimestamp(request.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"{request.id}  {request.status}  {binding.exported}  client {binding.client}", file=out)
        print(f"  rule: {binding.rule}", file=out)
        print(f"  asked: {created}", file=out)
        if request.status == "pending":
            print(f"  waits {max(0, int(request.expires - now))} s more", file=out)
        elif request.decided_by is not None:
            uses = "once" if request.uses == 1 else f"{request.uses} times"
            print(f"  decided by {request.decided_by} ({request.channel}), used {uses}", file=out)
        for line in request.arguments_display.splitlines():
            print(f"    {line}", file=out)


def _minutes(text: str) -> int:
    try:
        minutes = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of minutes") from None
    if not 1 <= minutes <= 24 * 60:
        raise argparse.ArgumentTypeError(f"{minutes} minutes is outside 1 to 1440")
    return minutes
