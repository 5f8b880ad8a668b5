"""The approval stage of the call pipeline: a call under an `approve` rule runs only with a person's grant.

A call first looks for a grant that covers it exactly (same client, tool,
canonical arguments, pinned definition and policy), and uses it. Without one:

- a client that declared form elicitation, on a connection that can carry a
  request to it, is asked within the call. Only `accept` with one of the
  offered choices approves. Decline, cancel, malformed content or a timeout
  deny. A question the client fails (an error response or a transport error)
  reached no person, so the call waits for an out-of-band decision as below.
  The failure is not recorded as a decision and does not count towards the
  cool-down;
- a 2026-07-28 client that declared form elicitation gets the same question as
  an input-required result (multi-round-trip requests, MRTR), with a sealed
  `requestState`. Its retry is decided by the response only if the state was
  sealed by this gateway for exactly this call, has not expired and was not
  used before. A retry that fails any of these checks is asked again and
  never runs;
- any other client gets a tool error at once stating that approval is pending,
  with the request id, the `mcp-guard approvals approve` command and, when the
  approval page is served, a one-time link to it. A person
  approves or denies out of band, and the client retries the same call, which
  then finds the grant.

Before anyone is asked, the client's waiting requests are capped and a
client whose last requests were denied in a row is denied without asking for
a cool-down, because a flood of questions is itself an attack on the person.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import structlog

from mcp_guard.approval.canonical import argument_digest
from mcp_guard.approval.display import minutes_text, render_arguments
from mcp_guard.approval.sealed import ApprovalKeyError, InvalidRequestState, StateSealer
from mcp_guard.approval.store import (
    ApprovalRequest,
    ApprovalStore,
    ApprovalStoreError,
    CallBinding,
    Channel,
    Scope,
)
from mcp_guard.audit import Redactor
from mcp_guard.config.models import GatewayConfig
from mcp_guard.gateway.pipeline import (
    Elicit,
    Handler,
    InputRound,
    ToolCall,
    ToolResult,
    UrlQuestion,
    tool_error,
)
from mcp_guard.policy.decisions import RequireApproval

log = structlog.get_logger(module=__name__)

# The field of the form, and the value of each choice.
DECISION_FIELD = "decision"
APPROVE_ONCE = "approve once"
DENY = "deny"
SESSION_CHOICE = "approve this tool for this session"
# A grant for the rest of a session lasts at most this long.
SESSION_GRANT_SECONDS = 12 * 3600.0
# Progress notifications sent to a caller waiting for a person, so its client does not time out.
PROGRESS_EVERY_SECONDS = 5.0
# How often a call waiting for a decision on the approval page looks for it.
PAGE_POLL_SECONDS = 0.25
# The key of the approval question in an input-required result's `inputRequests` and in the retry's
# `inputResponses`.
INPUT_KEY = "mcp-guard/approve"
# Characters kept of a client's error text in messages, the audit detail and the log.
MAX_ERROR_CHARS = 200


class ApprovalStage:
    """Lets a call under an `approve` rule through only with a grant, asking a person for one."""

    def __init__(
        self,
        store: ApprovalStore,
        config: GatewayConfig,
        redactor: Redactor,
        *,
        still_current: Callable[[ToolCall], bool],
        charge_question: Callable[[ToolCall], Awaitable[ToolResult | None]] | None = None,
        clock: Callable[[], float] = time.time,
        sealer: StateSealer | None = None,
        link_for: Callable[[str], str | None] | None = None,
        command: str = "mcp-guard approvals",
        announce: Callable[[ApprovalRequest, str | None], None] | None = None,
    ) -> None:
        self._store = store
        self._settings = config.approval
        self._redactor = redactor
        self._still_current = still_current
        self._charge_question = charge_question
        self._clock = clock
        self._policy_digest = policy_digest(config)
        self._asking: Counter[str] = Counter()
        # Without one, the key file of the store's state directory is read when a state is first sealed.
        self._sealer = sealer
        # Returns the approval page's one-time link to a waiting request, when the page is served.
        self._link_for = link_for
        # The `mcp-guard approvals` command line, with the policy file, that messages suggest.
        self._command = command
        # Announces a new out-of-band request (the webhook), without waiting for it.
        self._announce = announce

    async def __call__(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Pass the call on if it needs no approval or a grant covers it; otherwise ask for one."""
        decision = call.policy
        if not isinstance(decision, RequireApproval):
            return await next_handler(call)
        try:
            binding = self._binding(call, decision.rule)
        except ValueError as exc:
            return self._deny(call, "denied", f"its arguments cannot be approved: {exc}")
        try:
            grant = await self._store.take_grant(binding, self._clock())
            if grant is not None:
                call.detail = f"approved by {_person(grant.decided_by)} ({grant.channel}), request {grant.id}"
                log.info(
                    "approval_grant_used",
                    call_id=call.call_id,
                    client=call.client,
                    request=grant.id,
                    scope=grant.scope,
                )
                return await next_handler(call)
            denial = await self._flood_guard(call)
            if denial is not None:
                return self._deny(call, "denied", denial)
            if call.elicit is not None:
                return await self._ask_in_call(call, binding, call.elicit, next_handler)
            if call.url_question is not None and self._link_for is not None:
                return await self._ask_by_url(call, binding, call.url_question, next_handler)
            if call.input_round is not None:
                return await self._ask_through_mrtr(call, binding, call.input_round, next_handler)
            return await self._ask_out_of_band(call, binding)
        except ApprovalStoreError as exc:
            log.error("approval_store_unavailable", call_id=call.call_id, reason=exc.reason)
            return self._deny(call, "denied", str(exc))
        except ApprovalKeyError as exc:
            log.error("approval_key_unavailable", call_id=call.call_id, reason=exc.reason)
            return self._deny(call, "denied", str(exc))

    def _binding(self, call: ToolCall, rule: str) -> CallBinding:
        """Return what a grant for this call binds, if the call can be shown to a person at all.

        Raises:
            ValueError: The arguments cannot be digested or shown whole.
        """
        render_arguments(call.arguments, self._redactor)
        return CallBinding(
            client=call.client,
            session=call.session,
            server=call.tool.server,
            tool=call.tool.name,
            exported=call.tool.exported,
            rule=rule,
            arguments_digest=argument_digest(call.arguments),
            definition_digest=call.tool.digest,
            policy_digest=self._policy_digest,
        )

    async def _flood_guard(self, call: ToolCall) -> str | None:
        """Return why the client may not ask anyone now (a cool-down after denials), or None."""
        settings = self._settings
        now = self._clock()
        recent = await self._store.recent_decisions(call.client, settings.denials_before_cooldown)
        streak = len(recent) == settings.denials_before_cooldown and all(s == "denied" for s, _ in recent)
        if streak and now - recent[0][1] < settings.cooldown_seconds:
            wait = int(settings.cooldown_seconds - (now - recent[0][1])) + 1
            return (
                f"the last {settings.denials_before_cooldown} approval requests of this client were denied, "
                f"so calls that need approval are denied without asking for {wait} s more"
            )
        return None

    def _too_many(self, waiting: int) -> str:
        return (
            f"this client already has {waiting} approval requests waiting, the most it may have "
            f"(max_pending_per_client = {self._settings.max_pending_per_client})"
        )

    async def _ask_in_call(
        self, call: ToolCall, binding: CallBinding, elicit: Elicit, next_handler: Handler
    ) -> ToolResult:
        form = self._form(call, binding.rule)
        # Counted and taken without an await in between, so concurrent calls cannot all slip under the cap.
        waiting = await self._store.pending_count(call.client, self._clock())
        if waiting + self._asking[call.client] >= self._settings.max_pending_per_client:
            return self._deny(call, "denied", self._too_many(waiting + self._asking[call.client]))
        self._asking[call.client] += 1
        try:
            rejected = await self._charge(call)
            if rejected is not None:
                return rejected
            with _abandonment_logged(call, "form"):
                answer = await self._wait_for_answer(call, elicit, form)
        finally:
            self._asking[call.client] -= 1
        if isinstance(answer, _QuestionFailed):
            return await self._ask_after_failed_question(call, binding, answer.error)
        if answer is None:
            await self._record(
                binding, form.display, approve=False, scope="once", by="timeout", channel="form"
            )
            return self._deny(call, "approval_timed_out", "nobody answered the approval question in time")
        return await self._settle(call, binding, form, answer, next_handler, channel="form")

    async def _ask_through_mrtr(
        self, call: ToolCall, binding: CallBinding, input_round: InputRound, next_handler: Handler
    ) -> ToolResult:
        """Decide a retry by its verified answer, or return the question as an input-required result."""
        try:
            answer = await self._verified_answer(binding, input_round)
        except InvalidRequestState as exc:
            # The reason names only the failed check, so the state and its claims stay out of the log.
            log.warning(
                "approval_state_rejected", call_id=call.call_id, client=call.client, reason=exc.reason
            )
            if exc.reason == "expired":
                # Asking again would only expire again while the person decides, so the call ends here.
                return self._deny(
                    call, "approval_timed_out", "the approval question expired before the response came"
                )
            return await self._return_question(
                call, binding, f"the retry's request state was rejected ({exc.reason})"
            )
        if answer is None:
            return await self._return_question(call, binding, None)
        return await self._settle(call, binding, self._form(call, binding.rule), answer, next_handler, "mrtr")

    async def _verified_answer(self, binding: CallBinding, input_round: InputRound) -> dict[str, Any] | None:
        """Verify a retry's state, mark it used, and return the response the retry carries.

        Returns None for a first call and for a valid retry without a response.

        Raises:
            InvalidRequestState: Input responses came without a state, or the state is not valid for
                this call, has expired, or was used before.
        """
        if input_round.state is None:
            if input_round.responses:
                raise InvalidRequestState("input responses without a request state")
            return None
        sealer = await self._state_sealer()
        claims = sealer.open(input_round.state, binding, now=self._clock())
        if not await self._store.answer_question(claims.nonce, binding, self._clock()):
            raise InvalidRequestState("already used, or not issued by this gateway")
        return input_round.responses.get(INPUT_KEY)

    async def _return_question(self, call: ToolCall, binding: CallBinding, note: str | None) -> ToolResult:
        """Return the approval question as an input-required result whose sealed state binds this call."""
        form = self._form(call, binding.rule)
        sealer = await self._state_sealer()
        now = self._clock()
        valid = self._settings.timeout_seconds
        state, claims = sealer.seal(binding, expires=now + valid)
        waiting = await self._store.open_question(
            binding,
            claims.nonce,
            now=now,
            expires=now + valid,
            max_pending=self._settings.max_pending_per_client - self._asking[call.client],
        )
        if waiting is not None:
            return self._deny(call, "denied", self._too_many(waiting + self._asking[call.client]))
        rejected = await self._charge(call)
        if rejected is not None:
            await self._store.withdraw_question(claims.nonce)
            return rejected
        call.outcome = "approval_pending"
        call.detail = f"asked through an input-required result (MRTR), valid for {int(valid)} s"
        if note is not None:
            call.detail += f"; {note}"
        log.info("approval_question_returned", call_id=call.call_id, client=call.client, channel="mrtr")
        question = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=form.message, requested_schema=form.schema)
        )
        result = types.InputRequiredResult(input_requests={INPUT_KEY: question}, request_state=state)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def _settle(
        self,
        call: ToolCall,
        binding: CallBinding,
        form: _Form,
        answer: dict[str, Any],
        next_handler: Handler,
        channel: Channel,
    ) -> ToolResult:
        """Record the person's response and forward the call only if it approved."""
        choice = _accepted_choice(answer, form.choices)
        if choice is None or choice == DENY:
            reason = _denial_reason(answer, choice)
            await self._record(binding, form.display, approve=False, scope="once", by="user", channel=channel)
            return self._deny(call, "approval_declined", reason)
        if not self._still_current(call):
            return self._deny(call, "denied", "the tool's definition or the policy changed while it waited")
        scope, seconds = form.choices[choice]
        grant = await self._record(
            binding, form.display, approve=True, scope=scope, by="user", channel=channel, seconds=seconds
        )
        call.detail = f"approved by the user ({channel}: {choice}), request {grant}"
        log.info("approval_granted", call_id=call.call_id, client=call.client, channel=channel, choice=choice)
        return await next_handler(call)

    def _form(self, call: ToolCall, rule: str) -> _Form:
        """Build the approval question: the same message and choices on every channel."""
        display = render_arguments(call.arguments, self._redactor)
        choices = self._choices()
        schema = {
            "type": "object",
            "properties": {
                DECISION_FIELD: {"type": "string", "title": "Decision", "enum": list(choices)},
            },
            "required": [DECISION_FIELD],
        }
        message = _question(call, rule, display, self._settings.timeout_seconds)
        return _Form(display=display, choices=choices, message=message, schema=schema)

    async def _state_sealer(self) -> StateSealer:
        if self._sealer is None:
            # The key file is read or created once, off the event loop.
            self._sealer = await anyio.to_thread.run_sync(StateSealer.in_state_dir, self._store.path.parent)
        return self._sealer

    async def _wait_for_answer(
        self, call: ToolCall, elicit: Elicit, form: _Form
    ) -> dict[str, Any] | _QuestionFailed | None:
        """Return the client's answer, None on timeout, or why the client could not ask the question."""
        timeout = self._settings.timeout_seconds
        answer: dict[str, Any] | _QuestionFailed | None = None
        async with anyio.create_task_group() as tasks:
            if call.progress is not None:
                tasks.start_soon(_report_waiting, call, timeout)
            # The relay times the question out itself; this bounds a relay that does not.
            with anyio.move_on_after(timeout + 1):
                try:
                    answer = await elicit(form.message, form.schema, timeout)
                except TimeoutError:
                    answer = None
                except Exception as exc:  # contained: the call waits for an out-of-band decision instead
                    error = self._error_text(exc, form.display)
                    log.warning(
                        "approval_question_failed", call_id=call.call_id, client=call.client, error=error
                    )
                    answer = _QuestionFailed(error)
            tasks.cancel_scope.cancel()
        return answer

    def _error_text(self, exc: Exception, display: str) -> str:
        """Return why the client failed the question: redacted, short, and without the call's arguments."""
        error = getattr(exc, "error", None)
        if isinstance(error, types.ErrorData):
            head, text = f"error {error.code}", error.message
        else:
            head, text = type(exc).__name__, str(exc)
        text = self._redactor.redact_text(" ".join(text.split()))
        # A client may quote the question in its error, and the question shows every argument.
        if any(line.strip() and line.strip() in text for line in display.splitlines()):
            text = "its message quotes the call's arguments, so it is left out"
        described = f"{head}: {text}" if text else head
        return described[:MAX_ERROR_CHARS]

    async def _ask_after_failed_question(
        self, call: ToolCall, binding: CallBinding, error: str
    ) -> ToolResult:
        """Open an out-of-band request for a call whose client could not show the approval question.

        The request was already counted against `approvals_per_hour` when the question was sent.
        """
        opened = await self._open_request(call, binding, charge=False)
        if not isinstance(opened, ApprovalRequest):
            return opened
        return self._pending(
            call, binding, opened, cause=f"the client could not show the approval question ({error})"
        )

    async def _ask_out_of_band(self, call: ToolCall, binding: CallBinding) -> ToolResult:
        opened = await self._open_request(call, binding)
        if not isinstance(opened, ApprovalRequest):
            return opened
        return self._pending(call, binding, opened)

    async def _ask_by_url(
        self, call: ToolCall, binding: CallBinding, question: UrlQuestion, next_handler: Handler
    ) -> ToolResult:
        """Send the user to the request's page within the call, and wait there for the decision."""
        opened = await self._open_request(call, binding)
        if not isinstance(opened, ApprovalRequest):
            return opened
        link = self._link_for(opened.id) if self._link_for is not None else None
        if link is None:
            return self._pending(call, binding, opened)

        timeout = self._settings.timeout_seconds
        message = (
            f"mcp-guard: a person must approve a call of {call.tool.exported} (rule {binding.rule!r}). "
            f"Open the page to see the call and decide within {int(timeout)} s."
        )
        self._asking[call.client] += 1
        try:
            async with anyio.create_task_group() as tasks:
                if call.progress is not None:
                    tasks.start_soon(_report_waiting, call, timeout)
                with _abandonment_logged(call, "url"):
                    decided = await self._wait_on_page(call, question, message, link, opened.id, timeout)
                tasks.cancel_scope.cancel()
        finally:
            self._asking[call.client] -= 1
        if decided is None:
            return self._pending(call, binding, opened)

        with anyio.CancelScope(shield=True):
            await _quietly(question.complete(opened.id))
        if decided.status == "denied":
            return self._deny(
                call, "approval_declined", f"{_person(decided.decided_by)} denied it on the approval page"
            )
        grant = await self._store.take_grant(binding, self._clock())
        if grant is None or not self._still_current(call):
            return self._deny(call, "denied", "the approval no longer covers this call")
        approver = _person(grant.decided_by)
        call.detail = f"approved by {approver} ({grant.channel}, opened from the call), request {grant.id}"
        log.info(
            "approval_granted", call_id=call.call_id, client=call.client, channel="url", request=grant.id
        )
        return await next_handler(call)

    async def _wait_on_page(
        self, call: ToolCall, question: UrlQuestion, message: str, link: str, request_id: str, seconds: float
    ) -> ApprovalRequest | None:
        """Return the request once decided on the page, or None if the user did not go there or took too long."""
        deadline = self._clock() + seconds
        try:
            response = await question.ask(message, link, request_id, seconds)
        except Exception as exc:  # contained: the request keeps waiting for an out-of-band decision
            log.info("approval_link_not_opened", call_id=call.call_id, error=type(exc).__name__)
            return None
        if response.get("action") != "accept":
            return None
        while self._clock() < deadline:
            current = await self._store.get(request_id, self._clock())
            if current is None or current.status in ("approved", "denied"):
                return current
            if current.status != "pending":
                return None
            await anyio.sleep(PAGE_POLL_SECONDS)
        return None

    async def _open_request(
        self, call: ToolCall, binding: CallBinding, *, charge: bool = True
    ) -> ApprovalRequest | ToolResult:
        """Return the waiting request for this call, opening one if needed, or the result that ends the call.

        A new request counts against `approvals_per_hour` unless `charge` is False.
        """
        display = render_arguments(call.arguments, self._redactor)
        now = self._clock()
        # A retry after a person denied the call out of band learns so, instead of asking again at once.
        denied = await self._store.denial_of(binding, now - self._settings.pending_seconds)
        if denied is not None and denied.decided is not None:
            minutes = max(1, round((denied.decided + self._settings.pending_seconds - now) / 60))
            # The page decides as "approval page" through channel "page": name it once.
            named = not denied.channel or denied.channel in (denied.decided_by or "")
            channel = "" if named else f"{denied.channel}, "
            return self._deny(
                call,
                "approval_declined",
                f"{_person(denied.decided_by)} denied this call ({channel}request {denied.id}); the same call "
                f"can be asked again in about {minutes_text(minutes)}",
            )
        opened = await self._store.open_request(
            binding,
            display,
            now=now,
            wait_seconds=self._settings.pending_seconds,
            max_pending=self._settings.max_pending_per_client - self._asking[call.client],
        )
        if isinstance(opened, int):
            return self._deny(call, "denied", self._too_many(opened + self._asking[call.client]))

        request, created = opened
        if not created:
            return request
        rejected = await self._charge(call) if charge else None
        if rejected is not None:
            await self._store.withdraw(request.id)
            return rejected
        link = self._link_for(request.id) if self._link_for is not None else None
        log.warning(
            "approval_requested",
            request=request.id,
            client=call.client,
            tool=call.tool.exported,
            rule=binding.rule,
            hint=f"{self._command} approve {request.id}",
            page=link,
        )
        if self._announce is not None:
            self._announce(request, link)
        return request

    def _pending(
        self, call: ToolCall, binding: CallBinding, request: ApprovalRequest, cause: str | None = None
    ) -> ToolResult:
        """End the call with the "approval pending" error, which explains how to decide and to retry.

        `cause`, when given, says why nobody was asked within the call, and starts the error.
        The error never carries the approval page's link: the model reads it, and the link alone
        decides, so an agent that could send an HTTP request would approve its own call. The link
        goes only to the operator's channels (the gateway's log and the webhook).
        """
        minutes = max(1, round((request.expires - self._clock()) / 60))
        call.outcome = "approval_pending"
        call.detail = f"approval request {request.id} is waiting"
        requirement = f"rule {binding.rule!r} requires"
        if cause is not None:
            call.detail = f"{cause}; {call.detail}"
            requirement = f"{cause}. Rule {binding.rule!r} requires"
        hint = self._settings.pending_hint
        if hint is not None:
            # Replaced, not formatted: other braces in the operator's text stay as written.
            ask = hint.replace("{id}", request.id).rstrip(". ")
        else:
            page = (
                " (or use the approval page's link from the gateway's log)"
                if self._link_for is not None
                else ""
            )
            ask = f"Ask the user to run `{self._command} approve {request.id}`{page}"
        return tool_error(
            f"Approval pending: {requirement} a person to approve this call, and it has not "
            f"run. Request {request.id} waits for a decision for about {minutes} more minutes. "
            f"{ask}, then retry exactly the same call."
        )

    async def _record(
        self,
        binding: CallBinding,
        display: str,
        *,
        approve: bool,
        scope: Scope,
        by: str,
        channel: Channel,
        seconds: float = 0.0,
    ) -> str:
        request = await self._store.record_decision(
            binding,
            display,
            approve=approve,
            scope=scope,
            valid_seconds=seconds,
            by=by,
            channel=channel,
            now=self._clock(),
        )
        return request.id

    async def _charge(self, call: ToolCall) -> ToolResult | None:
        """Count a question against the client's `approvals_per_hour` limits; return the rejection, if any."""
        if self._charge_question is None:
            return None
        return await self._charge_question(call)

    def _choices(self) -> dict[str, tuple[Scope, float]]:
        """Return the offered choices: label -> (grant scope, seconds the grant stays valid)."""
        choices: dict[str, tuple[Scope, float]] = {APPROVE_ONCE: ("once", 0.0)}
        for minutes in self._settings.grant_minutes:
            choices[f"approve this exact call for {minutes_text(minutes)}"] = ("minutes", minutes * 60.0)
        if self._settings.offer_session:
            choices[SESSION_CHOICE] = ("session", SESSION_GRANT_SECONDS)
        choices[DENY] = ("once", 0.0)
        return choices

    def _deny(self, call: ToolCall, outcome: Any, reason: str) -> ToolResult:
        call.outcome, call.detail = outcome, reason
        log.info("tool_call_not_approved", call_id=call.call_id, client=call.client, reason=reason)
        return tool_error(f"Denied by mcp-guard: {reason}. The call did not run.")


@dataclass(frozen=True)
class _QuestionFailed:
    """A failed approval question: the client returned an error response, or the request failed in transport."""

    error: str
    """The failure, redacted and shortened, for messages and the log."""


@dataclass(frozen=True)
class _Form:
    """One approval question: what the person reads, the schema of the answer and the offered choices."""

    display: str
    """The rendered, redacted arguments."""
    choices: dict[str, tuple[Scope, float]]
    message: str
    schema: dict[str, Any]


def policy_digest(config: GatewayConfig) -> str:
    """Return a digest of the rules and the servers, so that a grant made under other rules, or for a
    server started or reached differently, does not apply."""
    policy = {
        "rules": [rule.model_dump(mode="json") for rule in config.rules],
        "servers": {name: server.model_dump(mode="json") for name, server in config.servers.items()},
    }
    text = json.dumps(policy, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _question(call: ToolCall, rule: str, display: str, timeout: float) -> str:
    return (
        f"mcp-guard: approve this tool call?\n\n"
        f"Server: {call.tool.server}\nTool: {call.tool.name} (called as {call.tool.exported})\n"
        f"Rule: {rule}\nClient: {call.client}\n\nArguments:\n{display}\n\n"
        f"Without an answer within {int(timeout)} s the call is denied."
    )


def _denial_reason(answer: dict[str, Any], choice: str | None) -> str:
    """Say why a response did not approve the call."""
    action = answer.get("action")
    if choice == DENY:
        return "the user chose to deny it"
    if action == "accept":
        return "the response was not one of the offered choices, which counts as a denial"
    if action == "decline":
        return "the user declined to approve it"
    return "the user cancelled the approval question"


def _accepted_choice(answer: dict[str, Any], choices: dict[str, tuple[Scope, float]]) -> str | None:
    """Return the chosen label of an `accept` response whose content is exactly one offered choice."""
    if answer.get("action") != "accept":
        return None
    content = answer.get("content")
    if not isinstance(content, dict) or set(content) != {DECISION_FIELD}:
        return None
    choice = content[DECISION_FIELD]
    return choice if isinstance(choice, str) and choice in choices else None


@contextmanager
def _abandonment_logged(call: ToolCall, channel: str) -> Iterator[None]:
    """Log a question left open because its call was cancelled, by the client or by the gateway stopping."""
    try:
        yield
    except anyio.get_cancelled_exc_class():
        log.info("approval_question_abandoned", call_id=call.call_id, client=call.client, channel=channel)
        raise


async def _quietly(step: Awaitable[None]) -> None:
    """Await a courtesy message to the client; a client that cannot take it changes nothing."""
    try:
        await step
    except Exception as exc:  # contained: the decision is made, the message only informs the client
        log.info("approval_notice_not_sent", error=type(exc).__name__)


async def _report_waiting(call: ToolCall, total_seconds: float) -> None:
    assert call.progress is not None
    waited = 0.0
    while True:
        await anyio.sleep(PROGRESS_EVERY_SECONDS)
        waited += PROGRESS_EVERY_SECONDS
        try:
            await call.progress(waited, total_seconds, "waiting for a person to approve the call")
        except Exception as exc:  # contained: progress is a courtesy; the answer decides
            log.info("approval_progress_not_sent", call_id=call.call_id, error=type(exc).__name__)
            return


def _person(decided_by: str | None) -> str:
    """Return the name of who decided, for details and messages: a form's decision is "the user"'s."""
    if decided_by is None or decided_by == "user":
        return "the user"
    return decided_by
