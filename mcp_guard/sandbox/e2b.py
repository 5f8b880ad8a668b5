"""The `e2b` backend: code runs in E2B cloud sandboxes through `e2b-code-interpreter`'s AsyncSandbox.

This is the only module that imports `e2b` or `e2b_code_interpreter`; every error
they raise is translated here into `SandboxUnavailable` or `SandboxFailed`. The
API key comes from the variable `[sandbox.e2b] api_key_from` names, is passed to
the SDK explicitly, and never appears in an error, a log line or a repr.

Each sandbox is created with an empty environment, outbound traffic denied
except to `SandboxLimits.allowed_hosts`, a lifetime cap after which E2B kills it
on its own, and metadata tags that let `remove_orphans` find the sandboxes an
earlier gateway process left behind. Whenever a run ends early (timeout, output
cap, error, cancellation) and when the sandbox is closed, it is killed in a
shielded, time-bounded cleanup. Choosing the backend and turning a `RunOutcome`
into a tool result are left to the rest of `mcp_guard.sandbox`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import httpx
import structlog
from e2b import (
    ALL_TRAFFIC,
    AuthenticationException,
    RateLimitException,
    SandboxException,
    SandboxNetworkOpts,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxUnreachableException,
    ServiceBusyException,
    TemplateException,
    TimeoutException,
)

# e2b-code-interpreter 2.11 ships no py.typed marker, so its names are Any to mypy.
from e2b_code_interpreter import (  # type: ignore[import-untyped]
    E2B,
    AsyncSandbox,
    Execution,
    OutputMessage,
    Result,
)

from mcp_guard.config.sandbox import E2BSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxError, SandboxFailed, SandboxUnavailable
from mcp_guard.sandbox.base import (
    LANGUAGES,
    CodeError,
    CodeRun,
    Language,
    OutputCapture,
    RichOutput,
    RunOutcome,
    SandboxLimits,
    SandboxTag,
    StopReason,
)
from mcp_guard.sandbox.owner import is_orphan, new_owner

log = structlog.get_logger(module=__name__)

# Turns an exception of the e2b SDK into a `SandboxError` (see `_translate`).
Translate = Callable[[Exception], SandboxError]

BACKEND = "e2b"
# Every sandbox this gateway creates carries this metadata pair; remove_orphans lists by it.
TAG_KEY = "mcp-guard"
TAG_VALUE = "1"
# The gateway process that created the sandbox (`owner.py`).
OWNER_KEY = "mcp-guard-owner"
# E2B's own cloud; the SDK's default when neither `domain` nor E2B_DOMAIN is set.
DEFAULT_DOMAIN = "e2b.app"
# Bounds one kill request, and the shielded cleanup around it, so that closing never hangs.
KILL_TIMEOUT_SECONDS = 10.0
# Bounds the whole orphan sweep at start-up, listing every page and killing each sandbox. It is
# below the runner's own 30-second bound, so the sweep ends here and still returns its count.
ORPHAN_SWEEP_SECONDS = 25.0
ORPHAN_PAGE_SIZE = 100
# run_code's language names in the code interpreter's terms.
E2B_LANGUAGES: dict[Language, str] = {"python": "python", "javascript": "javascript", "shell": "bash"}


class E2BBackend:
    """Creates E2B sandboxes with the API key from the environment mapping it is given."""

    kind = BACKEND
    languages: frozenset[Language] = frozenset(LANGUAGES)

    def __init__(self, settings: SandboxSettings, environ: Mapping[str, str]) -> None:
        self._settings: E2BSandboxSettings = settings.e2b
        self._api_key = environ.get(self._settings.api_key_from) or None
        self._client: E2B | None = None
        # Written on every sandbox, so that `remove_orphans` spares other gateways sharing the team.
        self._owner = new_owner()

    def __repr__(self) -> str:
        return f"E2BBackend(api_url={self._api_url()!r}, key_variable={self._settings.api_key_from!r})"

    async def check(self) -> None:
        """Make sure the API key variable is set.

        No request is sent: E2B may be unreachable at start-up, and a bad key shows up as
        `SandboxUnavailable` on the first `create`.

        Raises:
            SandboxUnavailable: The variable that should hold the API key is not set.
        """
        self._connect()

    async def create(self, limits: SandboxLimits, tag: SandboxTag) -> E2BSandbox:
        """Create a sandbox with an empty environment, the network rules of `limits` and a lifetime cap.

        Raises:
            SandboxUnavailable: The API key is missing or rejected, or the template is unusable.
            SandboxFailed: E2B could not create the sandbox.
        """
        client = self._connect()
        internet = False if not limits.allowed_hosts else None
        # NOTE: a sandbox is not killed here if this call is cancelled after E2B created it but
        # before the response arrived. The lifetime cap and remove_orphans end such a sandbox.
        try:
            sdk_sandbox = await client.AsyncSandbox.create(
                template=self._settings.template,
                timeout=self._settings.lifetime_seconds,
                metadata=_metadata(tag, self._owner),
                envs={},
                allow_internet_access=internet,
                network=_network(limits.allowed_hosts),
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        log.debug(
            "e2b_sandbox_created",
            sandbox_id=sdk_sandbox.sandbox_id,
            client=tag.client,
            call_id=tag.call_id,
            allowed_hosts=list(limits.allowed_hosts),
        )
        return E2BSandbox(sdk_sandbox, limits, self._translate)

    async def remove_orphans(self) -> int:
        """Kill the sandboxes an ended gateway process left behind; return how many were killed.

        Only sandboxes whose owner tag names this host and a gateway process that has ended
        count (see `owner.py`): other gateways on the same E2B team keep theirs.

        An error of E2B or of the connection is logged and ends the sweep early instead of being
        raised, so a gateway starts even when E2B cannot be reached. Cancellation still propagates.
        Sandboxes missed here end at their lifetime cap.
        """
        if self._api_key is None:
            log.warning("e2b_orphan_sweep_skipped", reason="no API key", variable=self._settings.api_key_from)
            return 0
        client = self._connect()
        killed = 0
        with anyio.move_on_after(ORPHAN_SWEEP_SECONDS) as sweep:
            try:
                for sandbox_id, owner in await self._list_tagged(client):
                    if not is_orphan(owner, self._owner):
                        continue
                    if await client.AsyncSandbox.kill(sandbox_id, request_timeout=KILL_TIMEOUT_SECONDS):
                        killed += 1
                        log.info("e2b_orphan_killed", sandbox_id=sandbox_id)
            except Exception as exc:
                log.warning("e2b_orphan_sweep_failed", killed=killed, error=str(self._translate(exc)))
        if sweep.cancelled_caught:
            log.warning("e2b_orphan_sweep_timed_out", killed=killed, seconds=ORPHAN_SWEEP_SECONDS)
        log.info("e2b_orphan_sweep_finished", killed=killed)
        return killed

    async def aclose(self) -> None:
        """Drop the client. The SDK's connection pools are process-wide and stay open."""
        self._client = None

    def _connect(self) -> E2B:
        if self._api_key is None:
            variable = self._settings.api_key_from
            raise SandboxUnavailable(
                BACKEND,
                f"no E2B API key: the variable {variable} is not set",
                f"Set {variable} to an E2B API key, or choose another backend in [sandbox] backend.",
            )
        if self._client is None:
            self._client = _client(self._settings, self._api_key, self._api_url())
        return self._client

    async def _list_tagged(self, client: E2B) -> list[tuple[str, str]]:
        # Every page is read before anything is killed, so that kills cannot shift the pages.
        query = SandboxQuery(metadata={TAG_KEY: TAG_VALUE})
        paginator = client.AsyncSandbox.list(query=query, limit=ORPHAN_PAGE_SIZE)
        found: list[tuple[str, str]] = []
        while paginator.has_next:
            for info in await paginator.next_items():
                # The query already filters by tag; the check keeps untagged sandboxes safe
                # from a server that ignores it.
                metadata = info.metadata or {}
                if metadata.get(TAG_KEY) == TAG_VALUE:
                    found.append((info.sandbox_id, str(metadata.get(OWNER_KEY, ""))))
        return found

    def _api_url(self) -> str:
        # Set explicitly so that E2B_API_URL in the gateway's own environment cannot redirect the key.
        domain = self._settings.domain or DEFAULT_DOMAIN
        return self._settings.api_url or f"https://api.{domain}"

    def _translate(self, exc: Exception) -> SandboxError:
        return _translate(exc, self._api_key or "", self._settings.api_key_from)


class E2BSandbox:
    """One E2B sandbox: fresh for a call, or kept for a session and run several times.

    A run that is stopped (timeout, output cap), fails or is cancelled kills the
    sandbox, so later runs in the same session raise `SandboxFailed`.
    """

    def __init__(self, sandbox: AsyncSandbox, limits: SandboxLimits, translate: Translate) -> None:
        self._sandbox = sandbox
        self._limits = limits
        self._translate = translate
        self._killed = False
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"E2BSandbox(sandbox_id={self.sandbox_id!r}, killed={self._killed})"

    @property
    def sandbox_id(self) -> str:
        """E2B's id of the sandbox."""
        sandbox_id: str = self._sandbox.sandbox_id
        return sandbox_id

    async def run(self, run: CodeRun, output: OutputCapture) -> RunOutcome:
        """Run `run.code`, streaming its output into `output`; kill the sandbox if the run ends early.

        Raises:
            SandboxFailed: The sandbox failed or was already killed; the sandbox is killed.
        """
        async with self._lock:
            if self._killed:
                raise SandboxFailed(
                    BACKEND,
                    "the sandbox was killed when an earlier run was stopped or failed; start a new one",
                )
            started = anyio.current_time()
            try:
                execution, stopped = await self._execute(run, output, started)
            except BaseException:
                await self._kill("run_failed")
                raise
            seconds = anyio.current_time() - started
            if execution is None:
                await self._kill(stopped or "stopped")
                return RunOutcome(
                    stdout=output.text("stdout"),
                    stderr=output.text("stderr"),
                    exit_code=None,
                    seconds=seconds,
                    stopped=stopped,
                    output_capped=output.capped,
                )
            return _outcome(execution, output, seconds)

    async def aclose(self) -> None:
        """Kill the sandbox. Safe to call twice and when cancelled."""
        await self._kill("closed")

    async def _execute(
        self, run: CodeRun, output: OutputCapture, started: float
    ) -> tuple[Execution | None, StopReason | None]:
        timeout = self._limits.timeout_seconds
        with anyio.CancelScope() as cap_scope, anyio.move_on_after(timeout) as deadline:

            def on_stdout(message: OutputMessage) -> None:
                if not output.add("stdout", message.line.encode()):
                    cap_scope.cancel()

            def on_stderr(message: OutputMessage) -> None:
                if not output.add("stderr", message.line.encode()):
                    cap_scope.cancel()

            try:
                # The SDK's own execution timeout is only a backstop: with pyqwest 0.12 it fires at
                # about twice `timeout`, because the transport adds the read and write timeouts.
                # NOTE: so the `_is_execution_timeout` branch below is not reached in the tests.
                execution = await self._sandbox.run_code(
                    run.code,
                    language=E2B_LANGUAGES[run.language],
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    timeout=timeout,
                )
            except TimeoutException as exc:
                if _is_execution_timeout(exc, anyio.current_time() - started, timeout):
                    return None, "timeout"
                raise self._translate(exc) from exc
            except Exception as exc:
                # Stopping the stream can surface as a transport error instead of the cancellation.
                if cap_scope.cancel_called or deadline.cancel_called:
                    return None, "output_cap" if output.capped else "timeout"
                raise self._translate(exc) from exc
        if output.capped:
            return None, "output_cap"
        if deadline.cancelled_caught:
            return None, "timeout"
        return execution, None

    async def _kill(self, reason: str) -> None:
        if self._killed:
            return
        self._killed = True
        sandbox_id = self.sandbox_id
        with anyio.move_on_after(KILL_TIMEOUT_SECONDS, shield=True) as bound:
            try:
                await self._sandbox.kill(request_timeout=KILL_TIMEOUT_SECONDS)
            except Exception as exc:
                # The lifetime cap still ends the sandbox, and remove_orphans at the next start.
                log.warning("e2b_sandbox_kill_failed", sandbox_id=sandbox_id, error=str(self._translate(exc)))
                return
        if bound.cancelled_caught:
            log.warning("e2b_sandbox_kill_timed_out", sandbox_id=sandbox_id, seconds=KILL_TIMEOUT_SECONDS)
            return
        log.debug("e2b_sandbox_killed", sandbox_id=sandbox_id, reason=reason)


def _client(settings: E2BSandboxSettings, api_key: str, api_url: str) -> E2B:
    options: dict[str, Any] = {"api_key": api_key, "api_url": api_url, "debug": False}
    if settings.domain is not None:
        options["domain"] = settings.domain
    if settings.sandbox_url is not None:
        options["sandbox_url"] = settings.sandbox_url
    # debug=False is explicit because debug mode (also switched on by E2B_DEBUG) skips kill requests.
    return E2B(**options)


def _metadata(tag: SandboxTag, owner: str) -> dict[str, str]:
    # E2B metadata values are strings; a missing session is left out rather than sent as "None".
    metadata = {TAG_KEY: TAG_VALUE, OWNER_KEY: owner, "client": tag.client, "call_id": tag.call_id}
    if tag.session is not None:
        metadata["session"] = tag.session
    return metadata


def _network(allowed_hosts: tuple[str, ...]) -> SandboxNetworkOpts:
    # deny_out of all traffic is what allow_internet_access=False means to E2B; with hosts,
    # allow_out takes precedence over it for those hosts only.
    if not allowed_hosts:
        return {"deny_out": [ALL_TRAFFIC]}
    return {"allow_out": list(allowed_hosts), "deny_out": [ALL_TRAFFIC]}


def _is_execution_timeout(exc: TimeoutException, elapsed: float, timeout: float) -> bool:
    # The subclasses mean the sandbox itself is gone or unreachable, and a quick
    # TimeoutException (a 502 from E2B's proxy) is a failure, not the code running out of time.
    if isinstance(exc, SandboxNotRunningException | SandboxUnreachableException):
        return False
    return elapsed >= timeout


def _outcome(execution: Execution, output: OutputCapture, seconds: float) -> RunOutcome:
    error = execution.error
    return RunOutcome(
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        exit_code=1 if error is not None else 0,
        seconds=seconds,
        error=CodeError(error.name, error.value, error.traceback) if error is not None else None,
        results=_rich_outputs(execution.results),
        output_capped=output.capped,
    )


def _rich_outputs(results: list[Result]) -> list[RichOutput]:
    # A plot's text is only its repr ("<Figure size 640x480 ...>"), so an image is kept in its place.
    outputs: list[RichOutput] = []
    for result in results:
        if result.png:
            outputs.append(RichOutput(kind="png", data=result.png))
        elif result.text is not None:
            outputs.append(RichOutput(kind="text", data=result.text))
    return outputs


def _translate(exc: Exception, api_key: str, key_variable: str) -> SandboxError:
    """Turn an exception of the e2b SDK into a `SandboxError`, most specific first, without the key."""
    reason = str(exc).replace(api_key, "[redacted]") if api_key else str(exc)
    if isinstance(exc, AuthenticationException):
        return SandboxUnavailable(
            BACKEND,
            f"E2B rejected the API key in {key_variable} ({reason})",
            f"Set {key_variable} to a valid E2B API key.",
        )
    if isinstance(exc, TemplateException):
        return SandboxUnavailable(
            BACKEND,
            f"the sandbox template cannot be used ({reason})",
            "Rebuild the template with a current E2B CLI, or remove [sandbox.e2b] template.",
        )

    if isinstance(exc, RateLimitException):
        return SandboxFailed(BACKEND, f"E2B's rate limit was exceeded; try again later ({reason})")
    if isinstance(exc, ServiceBusyException):
        return SandboxFailed(BACKEND, f"E2B has no capacity right now; try again later ({reason})")
    if isinstance(exc, SandboxNotRunningException | SandboxNotFoundException):
        return SandboxFailed(
            BACKEND, f"the sandbox is no longer running, killed or past its lifetime ({reason})"
        )
    if isinstance(exc, TimeoutException):
        return SandboxFailed(BACKEND, f"E2B did not respond in time ({reason})")
    if isinstance(exc, SandboxException):
        return SandboxFailed(BACKEND, f"E2B returned an error ({reason})")

    if isinstance(exc, httpx.HTTPError):
        return SandboxFailed(BACKEND, f"the request to E2B failed ({reason})")
    # The SDK also raises bare Exception and ValueError (for example on a malformed response).
    return SandboxFailed(BACKEND, f"the e2b SDK raised {type(exc).__name__} ({reason})")
