"""The approval page: a small web page on 127.0.0.1 where a person approves or denies a waiting call.

Each waiting request gets its own link with an unguessable token, which works
once: the first decision made through it uses it up, and a used, expired or
guessed link shows nothing. Opening the page (GET) never decides anything, so a
browser or a link preview that fetches it cannot approve a call. The page loads
no external assets and forbids everything else through its content security
policy. It serves only requests addressed to 127.0.0.1 or localhost on its own
port, so that a web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Callable

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mcp_guard.approval.display import minutes_text
from mcp_guard.approval.store import ApprovalRequest, ApprovalStore, ApprovalStoreError, NotPending
from mcp_guard.config.approval import ApprovalSettings

log = structlog.get_logger(module=__name__)

TOKEN_BYTES = 32
# Links kept at most. Each waiting request has one, and a client has at most a few waiting.
MOST_LINKS = 10_000
PAGE_BY = "approval page"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}"
    "pre{background:#f4f4f4;padding:.8rem;white-space:pre-wrap;word-break:break-all}"
    "button{font-size:1rem;margin:.3rem .5rem .3rem 0;padding:.4rem .9rem}"
    "dt{font-weight:bold}dd{margin:0 0 .5rem 0}"
)


class ApprovalPage:
    """One-time links to waiting requests, and the web app that serves them."""

    def __init__(
        self, store: ApprovalStore, settings: ApprovalSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._links: dict[str, str] = {}  # token -> request id
        self.base_url: str | None = None
        self._hosts: frozenset[str] = frozenset()

    def link_for(self, request_id: str) -> str | None:
        """Return the link to a waiting request's page, or None while the page is not serving."""
        if self.base_url is None:
            return None
        token = next((token for token, linked in self._links.items() if linked == request_id), None)
        if token is None:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            self._links[token] = request_id
            # Links of requests decided elsewhere stay until opened; the oldest go once there are many.
            while len(self._links) > MOST_LINKS:
                del self._links[next(iter(self._links))]
        return f"{self.base_url}/approve/{token}"

    def app(self, port: int) -> Starlette:
        """Build the web app, which serves only requests addressed to 127.0.0.1 or localhost on `port`."""
        self.base_url = f"http://127.0.0.1:{port}"
        self._hosts = frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})
        return Starlette(routes=[Route("/approve/{token}", self._handle, methods=["GET", "POST"])])

    async def _handle(self, request: Request) -> Response:
        # The whole Host header, port included, so that a rebound name on another port is refused too.
        if request.headers.get("host") not in self._hosts:
            return _page("Wrong address", "<p>Open the link exactly as the gateway gave it.</p>", 400)
        token = request.path_params["token"]
        request_id = self._links.get(token)
        if request_id is None:
            return _page(
                "Link not valid", "<p>This link was used already, has expired, or never existed.</p>", 404
            )
        if request.method == "POST":
            return await self._decide(request, token, request_id)
        try:
            waiting = await self._store.get(request_id, self._clock())
        except ApprovalStoreError as exc:
            log.error("approval_page_store_unavailable", reason=exc.reason)
            return _page(
                "Not available", "<p>The approval file cannot be read; see the gateway's log.</p>", 503
            )
        if waiting is None or waiting.status != "pending":
            self._links.pop(token, None)
            status = "gone" if waiting is None else waiting.status
            return _page("Nothing to decide", f"<p>This request is {html.escape(status)}.</p>", 410)
        return _page("Approve this tool call?", self._form(waiting, token), 200)

    async def _decide(self, request: Request, token: str, request_id: str) -> Response:
        form = await request.form()
        choice = str(form.get("decision", ""))
        choices = self._choices()
        if choice not in choices:
            return _page("Not understood", "<p>Choose one of the buttons on the page.</p>", 400)

        # Used up before the decision is written, so two submissions cannot both decide.
        if self._links.pop(token, None) is None:
            return _page("Link not valid", "<p>This link was used already.</p>", 404)
        approve, minutes = choices[choice]
        now = self._clock()

        try:
            decided = await self._store.decide(
                request_id,
                approve=approve,
                scope="minutes" if minutes else "once",
                valid_seconds=minutes * 60.0 if minutes else self._settings.pending_seconds,
                by=PAGE_BY,
                channel="page",
                now=now,
            )
        except NotPending as exc:
            return _page("Nothing to decide", f"<p>{html.escape(str(exc))}</p>", 410)
        except ApprovalStoreError as exc:
            log.error("approval_page_store_unavailable", reason=exc.reason)
            return _page(
                "Not recorded", "<p>The decision could not be recorded; see the gateway's log.</p>", 503
            )

        log.info("approval_decided", request=decided.id, approved=approve, channel="page")
        exported = html.escape(decided.binding.exported)
        if approve:
            lasting = f" for {minutes_text(minutes)}" if minutes else " once"
            body = f"<p>Approved{lasting}. The client's retry of <code>{exported}</code> will run.</p>"
            return _page("Approved", body, 200)
        return _page("Denied", f"<p>Denied. <code>{exported}</code> will not run.</p>", 200)

    def _choices(self) -> dict[str, tuple[bool, int]]:
        choices = {"approve once": (True, 0)}
        for minutes in self._settings.grant_minutes:
            choices[f"approve this exact call for {minutes_text(minutes)}"] = (True, minutes)
        choices["deny"] = (False, 0)
        return choices

    def _form(self, waiting: ApprovalRequest, token: str) -> str:
        binding = waiting.binding
        remaining = max(0, int(waiting.expires - self._clock()))
        facts = "".join(
            f"<dt>{label}</dt><dd>{html.escape(value)}</dd>"
            for label, value in (
                ("Server", binding.server),
                ("Tool", f"{binding.tool} (called as {binding.exported})"),
                ("Rule", binding.rule),
                ("Client", binding.client),
                ("Request", waiting.id),
                ("Waits", f"{remaining} s more"),
            )
        )
        buttons = "".join(
            f'<button type="submit" name="decision" value="{html.escape(choice)}">{html.escape(choice)}</button>'
            for choice in self._choices()
        )
        return (
            f"<dl>{facts}</dl><h2>Arguments</h2><pre>{html.escape(waiting.arguments_display)}</pre>"
            f'<form method="post" action="/approve/{html.escape(token)}">{buttons}</form>'
        )


def _page(title: str, body: str, status: int) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mcp-guard: {html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=SECURITY_HEADERS)
