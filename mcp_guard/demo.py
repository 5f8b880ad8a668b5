"""A scripted client session through mcp-guard to two published MCP servers.

`python -m mcp_guard.demo` (what `make demo` runs) builds a throwaway git
repository and a scratch folder under `demo-work/` at the repository root, then
starts `mcp-guard run -c policies/demo.toml` as a child process and talks to it
over stdio as any MCP client would. Each call and its outcome is printed,
followed by a summary table. The exit status is 1 when any step does not behave
as expected, so the demo doubles as a smoke test of the gateway on real servers.

The policy file explains how the gateway starts the servers. This module is
only the client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import TextContent

from mcp_guard.audit import CallFilter, CallRecord, SqliteAuditStore
from mcp_guard.config import GatewayConfig, load_config
from mcp_guard.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY = REPO_ROOT / "policies" / "demo.toml"
WORK_DIR = REPO_ROOT / "demo-work"
GIT_REPO = WORK_DIR / "repo"
FILES_DIR = WORK_DIR / "files"
OUTSIDE_FILE = WORK_DIR / "outside.txt"
LOG_FILE = WORK_DIR / "gateway.log"
# The rate-limit counts and approvals of the previous run, deleted so that every run starts afresh.
PREVIOUS_STATE = (WORK_DIR / "state" / "limits.sqlite3", WORK_DIR / "state" / "approvals.sqlite3")

# Bounds the whole session, from starting the gateway to the last result. A whole run took
# 2 to 3 s on the build machine (`time python -m mcp_guard.demo`), most of it starting servers.
SESSION_TIMEOUT_SECONDS = 60
# Each outcome is shown as at most this many lines of at most this many characters.
SHOWN_LINES = 12
# Bounds the wait for a step's outcome row, which the gateway commits in a batch just after it responds.
AUDIT_WAIT_SECONDS = 5.0
SHOWN_WIDTH = 100

# Fixed identity and dates make the throwaway repository's commit hashes the same on every run.
# GIT_CONFIG_GLOBAL (git 2.32 and later) keeps the user's own settings, such as commit
# signing or hooks, out of the demo.
GIT_ENVIRONMENT = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "mcp-guard demo",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "mcp-guard demo",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
}
COMMITS = (
    ("2025-01-06T09:00:00Z", "Add a README", {"README.md": "# Demo project\n"}),
    ("2025-01-07T09:00:00Z", "Add the greeting script", {"greet.py": 'print("hello")\n'}),
)
SCRATCH_FILES = {
    "notes.txt": "Meeting notes\n- ship the gateway\n- write the docs\n",
    "todo.md": "# To do\n\n- [ ] try mcp-guard\n",
}
WRITTEN_TEXT = "Written through mcp-guard.\n"

Outcome = Literal["ok", "tool error", "protocol error"]


@dataclass(frozen=True)
class Step:
    """One tool call of the script and the outcome it must have."""

    title: str
    tool: str
    arguments: dict[str, Any]
    expected: Outcome
    expected_text: str
    """Text that the outcome must contain."""
    person: str | None = None
    """The choice the scripted person makes if mcp-guard asks for approval during the step."""
    aims_at_listener: bool = False
    """The step's code tries to connect to the demo's listener on this machine, and must not arrive."""


@dataclass(frozen=True)
class StepResult:
    """The outcome and duration of one step of the script."""

    title: str
    outcome: Outcome
    milliseconds: float
    passed: bool
    audited: str = ""
    """The outcome the audit trail recorded for the step's call, if it has one."""


REPO_ARGUMENTS = {"repo_path": str(GIT_REPO)}
SUM_CODE = "print('adding up 1..100')\nsum(range(1, 101))"
# The sandbox has its own empty network namespace: even this machine's loopback is out of reach.
# The port is that of a listener the demo opens on this machine, which this machine itself reaches.
NETWORK_CODE = "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
HOST_FILES_CODE = "echo environment: $(env | cut -d= -f1); echo visible: $(ls /); " + (
    f"cat /etc/passwd {FILES_DIR / 'notes.txt'}"
)
HELLO_PATH = str(FILES_DIR / "hello.txt")
STEPS = (
    Step("git status", "git__git_status", REPO_ARGUMENTS, "ok", "README.md"),
    Step("git log", "git__git_log", REPO_ARGUMENTS, "ok", "Add the greeting script"),
    # The policy allows two git_log calls per minute, so the third in a row is rate limited.
    Step("git log again", "git__git_log", REPO_ARGUMENTS, "ok", "Add a README"),
    Step("git log a third time", "git__git_log", REPO_ARGUMENTS, "tool error", "Rate limited by mcp-guard"),
    Step("list the scratch folder", "files__list_directory", {"path": str(FILES_DIR)}, "ok", "notes.txt"),
    Step("read a file", "files__read_text_file", {"path": str(FILES_DIR / "notes.txt")}, "ok", "ship"),
    # Writes need a person's approval; the scripted person approves this exact call once...
    Step(
        "write a file (approved)",
        "files__write_file",
        {"path": HELLO_PATH, "content": WRITTEN_TEXT},
        "ok",
        "hello",
        person="approve once",
    ),
    Step("read it back", "files__read_text_file", {"path": HELLO_PATH}, "ok", WRITTEN_TEXT.strip()),
    # ...and is asked again for other arguments, which it denies.
    Step(
        "write other text (denied)",
        "files__write_file",
        {"path": HELLO_PATH, "content": "Overwritten.\n"},
        "tool error",
        "the user chose to deny it",
        person="deny",
    ),
    Step(
        "read outside the folder",
        "files__read_text_file",
        {"path": str(OUTSIDE_FILE)},
        "tool error",
        "Denied by mcp-guard",
    ),
    # git_commit exists downstream, but no rule grants it, so the gateway hides it.
    Step(
        "call a tool no rule grants",
        "git__git_commit",
        REPO_ARGUMENTS | {"message": "x"},
        "protocol error",
        "Unknown tool",
    ),
    # mcp-server-git has no push tool, so the gateway exports none.
    Step("call an unknown tool", "git__git_push", REPO_ARGUMENTS, "protocol error", "Unknown tool"),
    # run_code runs in a bubblewrap sandbox: no network, no host files, an empty environment.
    Step("run code", "run_code", {"language": "python", "code": SUM_CODE}, "ok", "value:\n5050"),
    Step(
        "code tries the network",
        "run_code",
        {"language": "python", "code": NETWORK_CODE},
        "tool error",
        "ConnectionRefusedError",
        aims_at_listener=True,
    ),
    Step(
        "code looks for host files",
        "run_code",
        {"language": "shell", "code": HOST_FILES_CODE},
        "tool error",
        "No such file or directory",
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and return the exit status: 0 if every step behaved as expected."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(POLICY)
        prepare_workspace()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"Creating the demo's files in {WORK_DIR} failed: {exc}", file=sys.stderr)
        return 1

    log_name = "stderr" if args.verbose else str(LOG_FILE.relative_to(REPO_ROOT))
    print(f"Gateway logs: {log_name}")
    log: AbstractContextManager[TextIO] = (
        nullcontext(sys.stderr) if args.verbose else LOG_FILE.open("w", encoding="utf-8")
    )
    started = time.perf_counter()
    try:
        with log as log_file:
            results = anyio.run(run_session, config, log_file)
    except Exception as exc:  # contained: whatever stops the session is reported, not raised
        print(f"\nThe session with the gateway failed: {_describe(exc)}", file=sys.stderr)
        print(f"The gateway logs are in {log_name}.", file=sys.stderr)
        return 1
    print_summary(results, time.perf_counter() - started)
    return 0 if all(result.passed for result in results) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_guard.demo",
        description="Run a scripted MCP client session through mcp-guard to mcp-server-git "
        "and server-filesystem.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="pass the gateway's stderr (its JSON logs and its servers' messages) through to this "
        f"stderr instead of writing it to {LOG_FILE.relative_to(REPO_ROOT)}",
    )
    return parser


def prepare_workspace() -> None:
    """Create the throwaway repository, the scratch folder and a file outside it, afresh."""
    for path in (GIT_REPO, FILES_DIR):
        shutil.rmtree(path, ignore_errors=True)
    for path in PREVIOUS_STATE:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    GIT_REPO.mkdir(parents=True)
    FILES_DIR.mkdir()

    _git("init", "--quiet", "--initial-branch=main")
    for date, message, files in COMMITS:
        for name, text in files.items():
            (GIT_REPO / name).write_text(text, encoding="utf-8")
        _git("add", *files)
        _git("commit", "--quiet", f"--date={date}", "-m", message, committer_date=date)
    # An uncommitted change gives `git status` something to report.
    (GIT_REPO / "README.md").write_text("# Demo project\n\nNow behind a gateway.\n", encoding="utf-8")

    for name, text in SCRATCH_FILES.items():
        (FILES_DIR / name).write_text(text, encoding="utf-8")
    OUTSIDE_FILE.write_text("This file is outside the scratch folder.\n", encoding="utf-8")


def _git(*args: str, committer_date: str | None = None) -> None:
    env = {**os.environ, **GIT_ENVIRONMENT}
    if committer_date is not None:
        env["GIT_COMMITTER_DATE"] = committer_date
    try:
        subprocess.run(["git", *args], cwd=GIT_REPO, env=env, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"git {args[0]} failed: {exc.stderr.strip()}") from exc


async def run_session(config: GatewayConfig, log: TextIO) -> list[StepResult]:
    """Start the gateway with `config`'s file, list its tools, then run every step in order."""
    gateway = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_guard", "run", "-c", str(POLICY)], cwd=REPO_ROOT
    )
    results: list[StepResult] = []
    # Passing the parameters straight to `Client` would send the gateway's stderr to this process's, so the
    # transport is built here with `stdio_client`, which takes the file to write it to.
    person = ScriptedPerson()
    with anyio.fail_after(SESSION_TIMEOUT_SECONDS):
        async with Client(stdio_client(gateway, errlog=log), elicitation_callback=person) as client:
            name = client.server_info.name if client.server_info else "the gateway"
            print(f"Connected to {name}, protocol {client.protocol_version}")
            results.append(await list_tools(client, config))
            async with AuditTail.opened(Path(config.gateway.state_dir)) as trail, HostListener() as listener:
                for step in STEPS:
                    person.choice = step.person
                    result = await run_step(client, listener.aim(step))
                    if step.aims_at_listener:
                        result = listener.check(result)
                    results.append(replace(result, audited=await trail.show_next()))
    results.append(await verify_trail())
    return results


class HostListener:
    """A TCP listener on 127.0.0.1 of this machine, which the sandboxed code must fail to reach."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(1)
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])

    async def __aenter__(self) -> HostListener:
        # This machine reaches the listener, so a refused connection from the sandbox is its doing.
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            pass
        self._socket.accept()[0].close()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._socket.close()

    def aim(self, step: Step) -> Step:
        """Put the listener's port into a step whose code tries to reach it."""
        if not step.aims_at_listener:
            return step
        print(
            f"\nThe demo listens on 127.0.0.1:{self.port}, and a connection from this machine reached it."
            " The next step's code tries the same from inside the sandbox."
        )
        code = str(step.arguments["code"]).format(port=self.port)
        return replace(step, arguments={**step.arguments, "code": code})

    def check(self, result: StepResult) -> StepResult:
        """Fail the step if any connection reached the listener while its code ran."""
        try:
            connection, _ = self._socket.accept()
        except BlockingIOError:
            print("  listener: no connection arrived")
            return result
        connection.close()
        print("  ! listener: a connection arrived from the sandbox")
        return replace(result, passed=False)


class AuditTail:
    """Reads the audit trail while the gateway writes it, to print the records of each step's call."""

    def __init__(self, store: SqliteAuditStore, last_row: int) -> None:
        self._store = store
        self._last_row = last_row

    @classmethod
    @asynccontextmanager
    async def opened(cls, state_dir: Path) -> AsyncIterator[AuditTail]:
        """Open the trail read-only and yield a reader that starts after its newest record."""
        async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
            newest = await store.search(CallFilter(), limit=1)
            yield cls(store, newest[0].intent_row_id if newest else 0)

    async def show_next(self) -> str:
        """Print the audit records of the step just made, once their outcomes are written.

        A 2026-07-28 client answers an approval question by sending the call again, so an approved
        call has two records: the first ends as approval_pending. Returns the outcomes in order.
        """
        calls: list[CallRecord] = []
        with anyio.move_on_after(AUDIT_WAIT_SECONDS):
            while not calls or any(call.outcome is None for call in calls):
                await anyio.sleep(0.02)
                calls = await self._store.search(CallFilter(after_row_id=self._last_row), oldest_first=True)
        outcomes = []
        for call in calls:
            if call.outcome is None:
                continue
            rule = f", rule {call.intent.rule!r}" if call.intent.rule else ""
            detail = f" ({_shorten(call.outcome.detail)})" if call.outcome.detail else ""
            print(f"  audit: {call.intent.server}/{call.intent.tool}: decision {call.intent.decision}{rule}")
            print(f"         outcome {call.outcome.outcome}{detail}")
            outcomes.append(call.outcome.outcome)
            self._last_row = call.intent_row_id
        if not outcomes:
            print("  audit: no finished record found")
            return "missing"
        return " > ".join(outcomes)


async def verify_trail() -> StepResult:
    """Run `mcp-guard audit verify`, as an operator would, and check that the trail is intact."""
    command = [sys.executable, "-m", "mcp_guard", "audit", "--config", str(POLICY), "verify"]
    _print_heading("audit verify", "mcp-guard audit --config policies/demo.toml verify")
    started = time.perf_counter()
    completed = await anyio.run_process(command, cwd=REPO_ROOT, check=False)
    milliseconds = (time.perf_counter() - started) * 1000

    text = (completed.stdout + completed.stderr).decode("utf-8", "replace")
    outcome: Outcome = "ok" if completed.returncode == 0 else "tool error"
    print(f"  = {outcome}")
    for line in _excerpt(text):
        print(f"    {line}")
    return StepResult("audit verify", outcome, milliseconds, passed=completed.returncode == 0)


class ScriptedPerson:
    """The demo's stand-in for the person who approves calls: it prints the question and picks `choice`."""

    def __init__(self) -> None:
        self.choice: str | None = None

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        print("  ? mcp-guard asks the person:")
        for line in params.message.splitlines():
            if line.strip():
                print(f"      {_shorten(line)}")
        if self.choice is None:
            print("    the person does not answer")
            return types.ElicitResult(action="cancel")
        print(f"    the person chooses: {self.choice}")
        return types.ElicitResult(action="accept", content={"decision": self.choice})


async def list_tools(client: Client, config: GatewayConfig) -> StepResult:
    """List the exported tools grouped by server.

    The step passes if every server in `config` exports at least one tool.
    """
    _print_heading("list tools", "tools/list")
    started = time.perf_counter()
    listing = await client.list_tools()
    milliseconds = (time.perf_counter() - started) * 1000

    names = [tool.name for tool in listing.tools]
    missing = []
    for server_id in config.servers:
        prefix = f"{config.prefix_of(server_id)}__"
        tools = [name.removeprefix(prefix) for name in names if name.startswith(prefix)]
        if not tools:
            missing.append(server_id)
        wrapped = textwrap.fill(", ".join(tools) or "(none)", SHOWN_WIDTH, subsequent_indent=" " * 6)
        print(f"    {prefix}*  {len(tools)} tools:\n      {wrapped}")
    own = [name for name in names if "__" not in name]
    if own:
        print(f"    the gateway's own:  {', '.join(own)}")
    if missing:
        print(f"  ! The gateway exports no tools from {', '.join(missing)}. Its logs say why.")
    return StepResult("list tools", "ok", milliseconds, passed=not missing)


async def run_step(client: Client, step: Step) -> StepResult:
    """Make one tool call, print its outcome and check it against the step's expectation."""
    _print_heading(step.title, _shorten(f"{step.tool} {json.dumps(step.arguments)}"))
    started = time.perf_counter()
    try:
        result = await client.call_tool(step.tool, step.arguments)
    except MCPError as exc:
        outcome: Outcome = "protocol error"
        text = f"{exc.message} (code {exc.code})"
    else:
        outcome = "tool error" if result.is_error else "ok"
        text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    milliseconds = (time.perf_counter() - started) * 1000

    passed = outcome == step.expected and step.expected_text in text
    print(f"  = {outcome}")
    for line in _excerpt(text):
        print(f"    {line}")
    if not passed:
        print(f"  ! expected {step.expected} containing {step.expected_text!r}")
    return StepResult(step.title, outcome, milliseconds, passed)


def print_summary(results: Sequence[StepResult], seconds: float) -> None:
    """Print one row per step (title, outcome, time) and the overall verdict."""
    width = max(len(result.title) for result in results)
    print(f"\n{'step':<{width}}  {'outcome':<14}  {'audit trail':<36}  {'ms':>6}  as expected")
    print(f"{'-' * width}  {'-' * 14}  {'-' * 36}  {'-' * 6}  {'-' * 11}")
    for result in results:
        verdict = "yes" if result.passed else "NO"
        print(
            f"{result.title:<{width}}  {result.outcome:<14}  {result.audited:<36}  "
            f"{result.milliseconds:>6.0f}  {verdict}"
        )
    failed = sum(not result.passed for result in results)
    verdict = "every step behaved as expected" if not failed else f"{failed} steps did not behave as expected"
    print(f"\n{len(results)} steps in {seconds:.1f} s: {verdict}.")


def _print_heading(title: str, call: str) -> None:
    print(f"\n## {title}\n  > {call}")


def _excerpt(text: str) -> list[str]:
    lines = [
        part
        for line in text.splitlines()
        for part in (textwrap.wrap(line, SHOWN_WIDTH) if len(line) > SHOWN_WIDTH else [line])
    ]
    lines = lines or ["(no text)"]
    excerpt = lines[:SHOWN_LINES]
    if len(lines) > SHOWN_LINES:
        excerpt.append(f"... ({len(lines) - SHOWN_LINES} more lines)")
    return excerpt


def _shorten(text: str) -> str:
    return text if len(text) <= SHOWN_WIDTH else text[: SHOWN_WIDTH - 3] + "..."


def _describe(exc: BaseException) -> str:
    """Summarise an error, flattening the exception groups that anyio task groups raise."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    if isinstance(exc, TimeoutError):
        return f"no result within {SESSION_TIMEOUT_SECONDS} s"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
