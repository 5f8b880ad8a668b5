"""The `mcp-guard pins` commands: list, review, approve and reject pinned tool definitions.

`add_pins_commands` registers the command tree on the main parser and
`run_pins_command` runs the parsed command against a state directory. Results
go to stdout (this is the command line, not the stdio server) and problems to
stderr with a non-zero exit status. The commands can run while the gateway
runs: both share the pin database, and the gateway reads approvals from it on
each call.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TextIO

import anyio

from mcp_guard.launcher import policy_command_line
from mcp_guard.pinning import display
from mcp_guard.pinning.errors import PinNotPending, PinStoreError
from mcp_guard.pinning.records import PinRecord
from mcp_guard.pinning.store import PinStore
from mcp_guard.policy.definitions import HASH_PREFIX

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# Shortest hash prefix `approve --hash` accepts: 64 bits, too many for a server to find
# another definition with the same prefix between a review and its approval.
MIN_HASH_PREFIX_DIGITS = 16
# Recorded as the approver when the operating system reports no user name.
UNKNOWN_OPERATOR = "operator"


def add_pins_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `pins` and its subcommands on the main parser's subparsers."""
    pins = subparsers.add_parser("pins", help="review and approve changed or new tool definitions")
    commands = pins.add_subparsers(dest="pins_command", required=True)

    listing = commands.add_parser("list", help="list every pinned tool with its state")
    listing.add_argument("--server", help="only the tools of this server")

    review = commands.add_parser("review", help="show each pending definition with its diff and findings")
    review.add_argument("--server", help="only the tools of this server")

    approve = commands.add_parser("approve", help="approve a pending definition, so the tool is exported")
    approve.add_argument("server", nargs="?", help="server id (with --all: only this server)")
    approve.add_argument("tool", nargs="?", help="tool name on that server")
    approve.add_argument("--all", action="store_true", help="approve every pending definition")
    approve.add_argument(
        "--hash",
        dest="expected_hash",
        help="approve only if the pending hash starts with this, as printed by review "
        f"(at least {MIN_HASH_PREFIX_DIGITS} hex digits)",
    )
    approve.add_argument(
        "--by", default=operator_name(), help="name recorded as the approver (default: your user name)"
    )

    reject = commands.add_parser("reject", help="reject a pending definition and keep the approved one")
    reject.add_argument("server", help="server id")
    reject.add_argument("tool", help="tool name on that server")


async def run_pins_command(
    args: argparse.Namespace,
    state_dir: Path,
    *,
    policy_path: str | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the parsed `pins` subcommand and return the exit status.

    Args:
        args: The namespace `argparse` produced for the `pins` command.
        state_dir: The gateway's state directory, which contains the pin database.
        policy_path: The policy file, named in the commands `review` prints.
        stdout: Where results go (default: `sys.stdout`).
    """
    out = stdout or sys.stdout
    command = args.pins_command
    usage_error = _usage_error(args)
    if usage_error is not None:
        print(usage_error, file=sys.stderr)
        return EXIT_USAGE
    store = PinStore.in_state_dir(state_dir)
    if not await anyio.Path(store.path).exists():
        # Opening the store would create an empty database; reporting is enough.
        if command in ("list", "review"):
            print(
                f"No pins recorded in {store.path} yet: "
                "the gateway records them when it lists a server's tools.",
                file=out,
            )
            return EXIT_OK
        print(f"No pin database at {store.path}: the gateway has not listed any tools yet.", file=sys.stderr)
        return EXIT_FAILED
    try:
        async with store:
            return await _dispatch(store, args, policy_command_line("pins", policy_path), out)
    except (PinNotPending, PinStoreError) as exc:
        print(display.escape_text(str(exc)), file=sys.stderr)
        return EXIT_FAILED


async def _dispatch(store: PinStore, args: argparse.Namespace, pins_command: str, out: TextIO) -> int:
    command = args.pins_command
    if command == "list":
        return await _list(store, args.server, out)
    if command == "review":
        return await _review(store, args.server, pins_command, out)
    if command == "reject":
        record = await store.reject(args.server, args.tool)
        print(
            f"Rejected {_name(record)} {record.pending_hash}. It stays withheld while the server offers it.",
            file=out,
        )
        return EXIT_OK
    if args.all:
        return await _approve_all(store, args.server, args.by, out)
    return await _approve_one(store, args, out)


async def _list(store: PinStore, server: str | None, out: TextIO) -> int:
    records = await store.pins(server)
    if not records:
        print("No pins recorded.", file=out)
        return EXIT_OK
    print(display.pin_table(records), file=out)
    return EXIT_OK


async def _review(store: PinStore, server: str | None, pins_command: str, out: TextIO) -> int:
    records = await store.pending(server)
    if not records:
        print("Nothing to review: no definition is waiting for approval.", file=out)
        return EXIT_OK
    for record in records:
        print(display.review_block(record, pins_command), file=out)
        print(file=out)
    noun = "definition is" if len(records) == 1 else "definitions are"
    print(f"{len(records)} {noun} waiting for review.", file=out)
    return EXIT_OK


async def _approve_one(store: PinStore, args: argparse.Namespace, out: TextIO) -> int:
    record = await store.get(args.server, args.tool)
    pending = None if record is None else record.pending_hash
    if pending is None:
        raise PinNotPending(args.server, args.tool, args.expected_hash, pending)
    if args.expected_hash is not None and not _hash_matches(args.expected_hash, pending):
        # A mistyped hash and a definition that changed since the review look the same here.
        print(
            display.escape_text(_hash_mismatch(args.server, args.tool, args.expected_hash, pending)),
            file=sys.stderr,
        )
        return EXIT_FAILED
    # The hash checked above is passed on, so a definition that changes meanwhile is not approved.
    approved = await store.approve(args.server, args.tool, args.by, expected_hash=pending)
    print(f"Approved {_name(approved)} {approved.approved_hash}.", file=out)
    return EXIT_OK


async def _approve_all(store: PinStore, server: str | None, by: str, out: TextIO) -> int:
    failed = 0
    records = await store.pending(server)
    for record in records:
        try:
            approved = await store.approve(record.server, record.tool, by, expected_hash=record.pending_hash)
        except PinNotPending as exc:
            failed += 1
            print(display.escape_text(str(exc)), file=sys.stderr)
            continue
        print(f"Approved {_name(approved)} {approved.approved_hash}.", file=out)
    print(f"Approved {len(records) - failed} of {len(records)} pending definitions.", file=out)
    return EXIT_FAILED if failed else EXIT_OK


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.pins_command != "approve":
        return None
    if args.all and args.tool is not None:
        return "approve: give SERVER TOOL, or --all with an optional SERVER, not both."
    if args.all and args.expected_hash is not None:
        return "approve: --hash checks one tool and cannot be combined with --all."
    if not args.all and (args.server is None or args.tool is None):
        return "approve: give SERVER TOOL, or --all."
    if args.expected_hash is not None and len(_hex_digits(args.expected_hash)) < MIN_HASH_PREFIX_DIGITS:
        return f"approve: --hash needs at least {MIN_HASH_PREFIX_DIGITS} hex digits of the pending hash."
    return None


def _hash_mismatch(server: str, tool: str, expected: str, pending: str) -> str:
    return (
        f"The hash of the pending definition of tool {tool!r} of server {server!r} is {pending}, "
        f"which does not start with {expected}. Copy the hash that `mcp-guard pins review` prints. "
        "If it differs from the hash you reviewed, the definition changed after your review: review it again."
    )


def _hash_matches(expected: str, digest: str) -> bool:
    return _hex_digits(digest).startswith(_hex_digits(expected).lower())


def _hex_digits(digest: str) -> str:
    return digest.removeprefix(HASH_PREFIX)


def _name(record: PinRecord) -> str:
    return f"{display.escape_text(record.server)}/{display.escape_text(record.tool)}"


def operator_name() -> str:
    try:
        return getpass.getuser()
    except OSError:
        return UNKNOWN_OPERATOR
