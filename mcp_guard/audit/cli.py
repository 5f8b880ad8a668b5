"""The `mcp-guard audit` commands: search, show, export, verify, prune and rekey.

`add_audit_commands` registers the command tree on the main parser and
`run_audit_command` runs the parsed command against a state directory. Results
go to stdout (this is the command line, not the stdio server) and problems to
stderr with a non-zero exit status. Only `prune` and `rekey` write; they need the
gateway to be stopped, because one process at a time may write the trail.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO, get_args

import anyio

from mcp_guard.audit import display, files
from mcp_guard.audit.chain import ChainBroken
from mcp_guard.audit.files import DEFAULT_KEY_ENV_VAR, AuditPaths
from mcp_guard.audit.query import RUNNING, CallFilter
from mcp_guard.audit.records import Decision, OutcomeKind, canonical_utc
from mcp_guard.audit.sqlite import SqliteAuditStore
from mcp_guard.audit.sqlite.rekey import RekeyResult, key_path_next, rekey_trail
from mcp_guard.audit.store import DEFAULT_SEARCH_LIMIT, AuditStore
from mcp_guard.downstream.naming import SEPARATOR
from mcp_guard.errors import AuditCorrupted, AuditUnavailable, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BROKEN = 2
# Seconds between polls of `search --follow` when the option is not given.
DEFAULT_FOLLOW_INTERVAL_SECONDS = 1.0
# Calls read per query while exporting; bounds memory, not the export.
EXPORT_PAGE_SIZE = 1000
_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def add_audit_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `audit` and its subcommands on the main parser's subparsers."""
    audit = subparsers.add_parser(
        "audit", help="search, show, export, verify and prune the audit trail, or replace its key"
    )
    audit.add_argument(
        "--key-env",
        default=None,
        help=f"environment variable holding the audit key as hex (default: audit.key_env, else {DEFAULT_KEY_ENV_VAR}); "
        "without it the key file in the state directory is used",
    )
    commands = audit.add_subparsers(dest="audit_command", required=True)

    search = commands.add_parser("search", help="list the most recent matching calls, oldest first")
    _add_filter_arguments(search)
    search.add_argument(
        "--limit", type=_positive_int, default=DEFAULT_SEARCH_LIMIT, help="maximum number of calls listed"
    )
    search.add_argument("--follow", action="store_true", help="keep printing new rows as they are written")
    search.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_FOLLOW_INTERVAL_SECONDS,
        help=f"seconds between polls with --follow (default: {DEFAULT_FOLLOW_INTERVAL_SECONDS:g})",
    )

    show = commands.add_parser("show", help="print one call in full: intent and outcome")
    show.add_argument("call_id", help="the call id, as listed by search")
    show.add_argument("--full", action="store_true", help="do not shorten long values")

    export = commands.add_parser("export", help="write matching calls as JSON Lines, oldest first")
    _add_filter_arguments(export)
    export.add_argument(
        "--output", "-o", type=Path, help="file to write, created with mode 0600 (default: stdout)"
    )

    commands.add_parser("verify", help="check the hash chain; exit status 2 if it is broken")

    prune = commands.add_parser("prune", help="delete the oldest rows; the gateway must be stopped")
    prune.add_argument("--older-than", type=parse_duration, help="delete rows older than this, e.g. 90d, 12h")
    prune.add_argument("--max-rows", type=_non_negative_int, help="keep at most this many rows")

    rekey = commands.add_parser(
        "rekey", help="sign the trail again with a new key, after checking it; the gateway must be stopped"
    )
    rekey.add_argument(
        "--new-key-env",
        metavar="VARIABLE",
        help="environment variable holding the new key as hex; needed when the key comes from a variable "
        "(default: a new random key replaces the key file)",
    )


async def run_audit_command(
    args: argparse.Namespace,
    state_dir: Path,
    *,
    key_env_var: str | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the parsed `audit` subcommand and return the exit status.

    Args:
        args: The namespace `argparse` produced for the `audit` command.
        state_dir: The gateway's state directory, which contains the audit files.
        key_env_var: Overrides `--key-env`, e.g. with the name from the policy file.
        stdout: Where results go (default: `sys.stdout`).
    """
    out = stdout or sys.stdout
    paths = AuditPaths.in_state_dir(state_dir)
    if not paths.database.exists():
        print(
            f"No audit trail at {paths.database}: the gateway has not recorded a call yet.", file=sys.stderr
        )
        return EXIT_FAILED
    command = args.audit_command
    if command == "prune" and args.older_than is None and args.max_rows is None:
        print("prune needs --older-than, --max-rows or both.", file=sys.stderr)
        return EXIT_FAILED
    key_variable = key_env_var or args.key_env or DEFAULT_KEY_ENV_VAR
    try:
        if command == "rekey":
            return await anyio.to_thread.run_sync(_rekey, paths, key_variable, args.new_key_env, out)
        store = SqliteAuditStore.in_state_dir(
            state_dir,
            key_env_var=key_variable,
            read_only=command != "prune",
            # Reading rows needs no key, while checking their hashes does.
            key_needed=command in ("verify", "prune"),
        )
        async with store:
            return await _dispatch(store, args, out)
    except AuditUnavailable as exc:
        fix = f" {exc.fix}" if exc.fix else ""
        print(f"The audit trail cannot be used: {exc.reason}.{fix}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader stopped early (`audit export | head`), which is not an error of the trail.
        return EXIT_FAILED
    except OSError as exc:
        target = exc.filename if exc.filename is not None else "the output"
        print(f"Cannot write {target}: {exc.strerror}.", file=sys.stderr)
        return EXIT_FAILED
    except (AuditCorrupted, ConfigError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BROKEN if isinstance(exc, AuditCorrupted) else EXIT_FAILED


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as `90d`, `12h`, `30m`, `45s` or `2w`.

    Raises:
        argparse.ArgumentTypeError: The text is not a number followed by s, m, h, d or w.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number and s, m, h, d or w, e.g. 90d"
        )
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


async def _dispatch(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    command = args.audit_command
    if command == "search":
        return await _search(store, _filters(args), args, out)
    if command == "show":
        return await _show(store, args.call_id, args.full, out)
    if command == "export":
        return await _export(store, _filters(args), args.output, out)
    if command == "verify":
        return await _verify(store, out)
    return await _prune(store, args, out)


async def _search(store: AuditStore, filters: CallFilter, args: argparse.Namespace, out: TextIO) -> int:
    last_row_id = await store.last_row_id()
    calls = await store.search(filters, limit=args.limit)
    for call in reversed(calls):
        print(display.call_line(call), file=out)
    out.flush()
    if not calls:
        print(_no_match_message(filters), file=sys.stderr)
    if args.follow:
        await _follow(store, filters, last_row_id, args.interval, out)
    return EXIT_OK


def _no_match_message(filters: CallFilter) -> str:
    if filters.tool is not None and SEPARATOR in filters.tool:
        prefix, _, tool = filters.tool.partition(SEPARATOR)
        return (
            f"No calls match. --tool takes a tool's name on its server, as the trail stores it, while "
            f"{filters.tool!r} looks like the name a client sees. Try --server {prefix} --tool {tool} (the "
            f"part before {SEPARATOR!r} is the server's id, unless the server sets a prefix). A name the "
            "gateway did not export is stored as the client sent it."
        )
    return "No calls match."


async def _follow(
    store: AuditStore, filters: CallFilter, last_row_id: int, interval: float, out: TextIO
) -> None:
    """Print each new row whose call matches the filters; runs until cancelled (Ctrl-C).

    An intent row is matched before its outcome exists, so with `--outcome` only
    outcome rows are printed.
    """
    while True:
        rows = await store.rows_after(last_row_id, limit=EXPORT_PAGE_SIZE)
        for row in rows:
            last_row_id = row.row_id
            call = await store.get_call(row.record.call_id)
            if call is None:
                continue  # The intent was pruned; the filters cannot be applied.
            outcome = call.outcome if row.kind == "outcome" else None
            if filters.matches(call.intent, outcome, call.intent_row_id):
                print(display.row_line(row), file=out)
        out.flush()
        if not rows:
            await anyio.sleep(interval)


async def _show(store: AuditStore, call_id: str, full: bool, out: TextIO) -> int:
    call = await store.get_call(call_id)
    if call is None:
        print(
            f"No call with id {display.escape_text(call_id)!r} in the audit trail. A call id is 32 hex "
            "digits: copy the whole id from the second column of `audit search`.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(display.call_details(call, full=full), file=out)
    return EXIT_OK


async def _export(store: AuditStore, filters: CallFilter, output: Path | None, out: TextIO) -> int:
    if output is None:
        await _write_export(store, filters, out)
        return EXIT_OK
    with _open_owner_only(output) as file:
        count = await _write_export(store, filters, file)
    print(f"Exported {count} calls to {output}.", file=sys.stderr)
    return EXIT_OK


async def _write_export(store: AuditStore, filters: CallFilter, out: TextIO) -> int:
    count = 0
    page = filters
    while calls := await store.search(page, limit=EXPORT_PAGE_SIZE, oldest_first=True):
        for call in calls:
            print(display.export_line(call), file=out)
        count += len(calls)
        page = filters.model_copy(update={"after_row_id": calls[-1].intent_row_id})
    return count


async def _verify(store: AuditStore, out: TextIO) -> int:
    result = await store.verify()
    if isinstance(result, ChainBroken):
        where = f"at row {result.row_id}" if result.row_id is not None else "at an end of the trail"
        print(
            f"The audit trail is broken {where}: {result.detail}. "
            f"{result.rows_checked} rows before it verified.",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    if result.first_row_id is None:
        print("The audit trail is intact: it has no rows.", file=out)
    else:
        print(
            f"The audit trail is intact: {result.rows_checked} rows verified "
            f"(rows {result.first_row_id} to {result.last_row_id}).",
            file=out,
        )
    return EXIT_OK


async def _prune(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    result = await store.prune(older_than=args.older_than, max_rows=args.max_rows)
    if result.anchor_row_id is None:
        print("Nothing to prune.", file=out)
    else:
        print(f"Deleted {result.rows_deleted} rows, up to row {result.anchor_row_id}.", file=out)
    return EXIT_OK


def _rekey(paths: AuditPaths, key_variable: str, new_key_variable: str | None, out: TextIO) -> int:
    """Replace the audit key: the key file's, or the one in `key_variable` when that is set."""
    try:
        old_key = files.load_audit_key(paths.key, key_variable, create=False)
    except FileNotFoundError:
        raise AuditUnavailable(f"no audit key at {paths.key} and ${key_variable} is not set") from None
    except ValueError as exc:
        raise AuditUnavailable(str(exc)) from None

    new_key: bytes | None = None
    if new_key_variable:
        new_key, problem = _new_key(new_key_variable, old_key)
        if new_key is None:
            print(problem, file=sys.stderr)
            return EXIT_FAILED

    if not os.environ.get(key_variable):
        return _rekey_file(paths, old_key, new_key, out)
    if new_key is None:
        print(
            f"The audit key comes from ${key_variable}, which mcp-guard cannot change. Put a new key "
            "(64 hex digits) in another variable and pass its name with --new-key-env.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    result = rekey_trail(paths, old_key, new_key)
    print(_rekeyed(result), file=out)
    print(
        f"Set ${key_variable} to the new key (the value of ${new_key_variable}) before the gateway "
        "starts again: the old key no longer verifies the trail.",
        file=out,
    )
    return EXIT_OK


def _rekey_file(paths: AuditPaths, old_key: bytes, new_key: bytes | None, out: TextIO) -> int:
    """Replace the key file with `new_key`, or with a new random key."""
    waiting = key_path_next(paths.key)
    if new_key is not None and waiting.exists():
        print(
            f"An earlier rekey was interrupted and left its new key in {waiting}. Run "
            "`mcp-guard audit rekey` again without --new-key-env to finish it.",
            file=sys.stderr,
        )
        return EXIT_FAILED

    # A key left by an interrupted run is used again, so the rows it signed still verify.
    left_by_earlier_run = waiting.exists()
    if left_by_earlier_run and files.load_audit_key(waiting, None, create=False) == old_key:
        # Only a copy of the key in use: nothing was signed with it.
        waiting.unlink()
        left_by_earlier_run = False
    if not left_by_earlier_run:
        _write_key(waiting, new_key or secrets.token_bytes(files.KEY_BYTES))

    try:
        result = rekey_trail(paths, old_key, files.load_audit_key(waiting, None, create=False))
    except (AuditCorrupted, AuditUnavailable):
        # Raised before anything changed (a broken chain, a running gateway, a failed
        # transaction). After any other failure the trail may already be signed with the
        # waiting key, so it stays for the next run.
        if not left_by_earlier_run:
            waiting.unlink(missing_ok=True)
        raise
    os.replace(waiting, paths.key)
    _sync_folder(paths.key.parent)
    print(_rekeyed(result), file=out)
    print(
        f"The new key is in {paths.key}. The old key no longer verifies the trail; delete every copy of it.",
        file=out,
    )
    return EXIT_OK


def _rekeyed(result: RekeyResult) -> str:
    if result.already_done:
        return f"An earlier run had already signed the {result.rows} rows with the new key."
    return f"Checked the trail with the old key and signed its {result.rows} rows again with the new key."


def _new_key(variable: str, old_key: bytes) -> tuple[bytes | None, str]:
    """Return the new key from `variable`, or None and why it cannot be used. Nothing was changed then."""
    make_one = f"Make one with `openssl rand -hex 32` and put it in ${variable}; nothing was changed."
    text = os.environ.get(variable, "")
    if not text:
        return None, f"${variable} is not set. {make_one}"
    try:
        key = files.parse_key(text)
    except ValueError as exc:
        # The message never repeats the value, which is a secret.
        return None, f"${variable} does not contain a usable key: {exc}. {make_one}"
    if key == old_key:
        return None, f"${variable} contains the audit key in use, not a new one. {make_one}"
    return key, ""


def _write_key(path: Path, key: bytes) -> None:
    """Write `key` as hex into a new file readable by its owner only, and wait for the disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", help="only calls from this client profile")
    parser.add_argument("--server", help="only calls to this downstream server")
    parser.add_argument(
        "--tool", help="only calls of this tool, by its name on its server (git_log, not git__git_log)"
    )
    parser.add_argument("--decision", choices=get_args(Decision), help="only calls with this policy decision")
    parser.add_argument(
        "--outcome",
        choices=[*get_args(OutcomeKind), RUNNING],
        help="only calls that ended this way, or that are still running",
    )
    parser.add_argument(
        "--since",
        type=_utc_time,
        help="only calls received at or after this time: ISO 8601 (UTC unless an offset is given) "
        "or a duration ago (1h, 7d)",
    )
    parser.add_argument("--until", type=_utc_time, help="only calls received before this time (as --since)")
    parser.add_argument("--text", help="only calls with this text in any field (ASCII case-insensitive)")


def _filters(args: argparse.Namespace) -> CallFilter:
    names = ("client", "server", "tool", "decision", "outcome", "since", "until", "text")
    return CallFilter(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})


def _open_owner_only(path: Path) -> TextIO:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # An existing file keeps its mode through O_CREAT.
    return open(descriptor, "w", encoding="utf-8")


def _utc_time(text: str) -> str:
    """Parse an ISO 8601 time, or a duration such as `1h` meaning that long ago."""
    if _DURATION.fullmatch(text.strip()):
        return canonical_utc(datetime.now(UTC) - parse_duration(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2025-11-25T09:00Z) or a duration ago (1h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return canonical_utc(parsed)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use 1 or more")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use 0 or more")
    return value
