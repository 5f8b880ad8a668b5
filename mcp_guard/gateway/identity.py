"""Client identity: the client profile behind each request.

Over stdio the client is the profile the gateway was started with. Over HTTP a
client proves who it is with a bearer API key, which the gateway compares, as
a SHA-256 hash, with the hashes the policy file lists for each client. A
request without a valid key is rejected with 401 before any MCP handling.
Self-reported `clientInfo` never identifies anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import structlog
from mcp.server import ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_guard.config.models import GatewayConfig
from mcp_guard.config.rules import API_KEY_HASH
from mcp_guard.errors import ConfigError

log = structlog.get_logger(module=__name__)

HASH_PREFIX = "sha256:"
# Keys are 32 random bytes: guessing one is as hard as breaking SHA-256 preimages.
API_KEY_BYTES = 32
API_KEY_PREFIX = "mcpg_"


@dataclass(frozen=True)
class ClientIdentity:
    """A client profile from the policy file."""

    name: str
    organisation: str | None = None
    groups: tuple[str, ...] = ()


def new_api_key() -> str:
    """Generate a random API key for a client."""
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def hash_api_key(key: str) -> str:
    """Return the form of `key` that the policy file stores: `sha256:<hex digest>`."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


class ClientDirectory:
    """The clients of a policy file, looked up by name or by API key."""

    def __init__(self, config: GatewayConfig, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._clients = {
            name: ClientIdentity(name, client.organisation, tuple(client.groups))
            for name, client in config.clients.items()
        }
        self._accepts_oauth = config.gateway.oauth is not None
        self._key_hashes: list[tuple[bytes, str]] = []
        owners: dict[str, str] = {}
        for name, client in config.clients.items():
            hashes = list(client.api_key_hashes)
            if client.api_key_hashes_from:
                hashes += _hashes_from(environ, client.api_key_hashes_from, name)
            for key_hash in hashes:
                owner = owners.setdefault(key_hash, name)
                if owner != name:
                    raise ConfigError("environment", [_shared_key_problem(owner, name)])
            self._key_hashes += [(bytes.fromhex(h.removeprefix(HASH_PREFIX)), name) for h in hashes]

    @property
    def keyed_clients(self) -> list[str]:
        """The clients with at least one API key hash, from the policy file or its variable."""
        return list(dict.fromkeys(name for _, name in self._key_hashes))

    @property
    def has_credentials(self) -> bool:
        """Whether any client can authenticate over HTTP."""
        return bool(self._key_hashes) or self._accepts_oauth

    def get(self, name: str) -> ClientIdentity:
        """Return the client called `name`; a name missing from the policy file is a client with no rules."""
        return self._clients.get(name, ClientIdentity(name))

    def client_for_key(self, key: str) -> str | None:
        """Return the name of the client whose API key is `key`, or None (also for a key of two clients)."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        # Compare against every hash so the time taken does not tell which prefix matched.
        found = {name for expected, name in self._key_hashes if hmac.compare_digest(digest, expected)}
        return found.pop() if len(found) == 1 else None


def _shared_key_problem(owner: str, client: str) -> str:
    return (
        f"clients {owner!r} and {client!r} list the same API key hash (in api_key_hashes or the "
        "variable api_key_hashes_from names); a key must identify one client, so give each its own "
        "(`mcp-guard keys new`)"
    )


def _hashes_from(environ: Mapping[str, str], variable: str, client: str) -> list[str]:
    """Read comma-separated key hashes from an environment variable, rejecting malformed ones."""
    hashes = [entry.strip() for entry in environ.get(variable, "").split(",") if entry.strip()]
    for index, entry in enumerate(hashes):
        # The message never repeats the value: a malformed entry may be a key pasted by mistake.
        if not API_KEY_HASH.match(entry):
            raise ConfigError(
                "environment",
                [
                    f"${variable} (API key hashes of client {client!r}): entry [{index}] is not written as "
                    "'sha256:<64 lowercase hex digits>'; store hashes made by `mcp-guard keys new`"
                ],
            )
    return hashes


class ApiKeyVerifier:
    """The SDK token verifier: accepts a bearer token that is the API key of a configured client."""

    def __init__(self, directory: ClientDirectory) -> None:
        self._directory = directory

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return an access token naming the client, or None (the SDK then responds with 401)."""
        name = self._directory.client_for_key(token)
        if name is None:
            log.warning("authentication_failed", reason="unknown API key", peer=request_peer())
            return None
        return AccessToken(token=hash_api_key(token), client_id=name, scopes=[])


def http_client_name(ctx: ServerRequestContext[Any]) -> str:
    """Return the authenticated client of an HTTP request.

    Raises:
        MCPError: The request carries no verified credentials (the SDK's 401 check should
            make this unreachable, so it fails closed rather than guessing).
    """
    token = get_access_token()
    if token is None:
        raise MCPError(
            INVALID_REQUEST, "This request is not authenticated; send your API key as a bearer token."
        )
    return token.client_id


# The address of the HTTP peer whose request is being authenticated, set by `MissingTokenLog`.
_REQUEST_PEER: ContextVar[str | None] = ContextVar("mcp_guard_request_peer", default=None)


def request_peer() -> str | None:
    """Return the address of the HTTP peer whose request is being handled, if known."""
    return _REQUEST_PEER.get()


# A peer whose requests lack a bearer token is logged at most once in this many seconds.
AUTH_LOG_INTERVAL_SECONDS = 60.0
# Peers remembered at most. When that many are remembered, the memory starts over.
MAX_AUTH_LOG_PEERS = 1024


class MissingTokenLog:
    """ASGI wrapper that logs requests to the MCP path without a bearer token, before the SDK rejects them.

    An unknown token is logged by `ApiKeyVerifier`. A request with no token, or with another
    kind of Authorization header, never reaches it, so it is logged here: at most once a minute
    per peer address, with the number of such requests since the last line.
    """

    def __init__(self, app: ASGIApp, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._app = app
        self._path = path
        self._clock = clock
        self._peers: dict[str, tuple[float, int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("path", "").rstrip("/") != self._path.rstrip("/"):
            await self._app(scope, receive, send)
            return
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        reason = _token_problem(scope.get("headers", []))
        if reason is not None:
            self._note(peer, reason)
        # The token verifiers log a rejected token with the peer they read from here.
        marker = _REQUEST_PEER.set(peer)
        try:
            await self._app(scope, receive, send)
        finally:
            _REQUEST_PEER.reset(marker)

    def _note(self, peer: str, reason: str) -> None:
        now = self._clock()
        logged_at, unlogged = self._peers.get(peer, (float("-inf"), 0))
        if now - logged_at < AUTH_LOG_INTERVAL_SECONDS:
            self._peers[peer] = (logged_at, unlogged + 1)
            return
        if len(self._peers) >= MAX_AUTH_LOG_PEERS:
            self._peers.clear()
        self._peers[peer] = (now, 0)
        log.warning("authentication_failed", reason=reason, peer=peer, since_last_line=unlogged)


def _token_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Return why the request carries no bearer token, or None when it carries one."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        return "no Authorization header"
    if not values[0].lower().startswith(b"bearer "):
        return "the Authorization header is not a Bearer token"
    return None
