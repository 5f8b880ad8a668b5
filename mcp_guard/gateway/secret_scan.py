"""Withholding results that contain the gateway's keys or the credentials it reads.

The policy guard rejects calls that name the gateway's files, but a tool can read them without
naming them: a search over a folder that contains the state directory, or `git diff` in a
repository that contains it. The secrets in those files, and the credentials the policy reads
from the environment for servers, are known to the gateway. So every tool result is scanned
for them, as they are and in base64, and a result that contains one is replaced by an error.

NOTE: a secret the model receives in another encoding (split, reversed, in hex when it was text)
is not found. The scan stops the plain copies that a search or a diff returns.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from mcp_guard.approval.sealed import KEY_FILE as APPROVAL_KEY_FILE
from mcp_guard.approval.sealed import parse_key
from mcp_guard.audit import files
from mcp_guard.config.models import ENV_REFERENCE, GatewayConfig, HttpServerConfig, StdioServerConfig
from mcp_guard.gateway.pipeline import Handler, ToolCall, ToolResult, tool_error

log = structlog.get_logger(module=__name__)

# Shorter values are not scanned for: a variable such as DEBUG=1 would match everywhere.
MIN_SECRET_CHARS = 8
# The next step when a tool result contains a key of the state directory.
STATE_DIR_FIX = (
    "Move gateway.state_dir out of the folders that servers are given, and keep it out of version "
    "control. Replace a key that was committed: the audit key with `mcp-guard audit rekey`, the "
    "approval key by deleting approval.key while the gateway is stopped."
)
# Base64 forms are made only of secrets at least this long, so each form has 12 characters or more.
MIN_ENCODED_BYTES = 12


@dataclass(frozen=True)
class Secret:
    """A secret of the gateway and the strings that give it away.

    Attributes:
        description: What it is, completing "the result contains ...": "mcp-guard's audit key".
        needles: The secret as written, and its base64 forms.
        fix: What the operator should do when a result contains it, or "".
    """

    description: str
    needles: tuple[str, ...]
    fix: str = ""


def secret(description: str, value: str | bytes, fix: str = "") -> Secret | None:
    """Return the secret with the forms a tool may return it in, or None when it is too short to scan for.

    Text is found as it is. Its base64 is found at any offset of an encoded file: one of the three
    ways to align the secret with base64's 3-byte groups matches. Binary keys are found in hex and
    base64.
    """
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) < MIN_SECRET_CHARS:
        return None
    needles = {value} if isinstance(value, str) else {raw.hex(), raw.hex().upper()}
    if len(raw) >= MIN_ENCODED_BYTES:
        for start in range(3):
            usable = (len(raw) - start) // 3 * 3
            chunk = raw[start : start + usable]
            needles.add(base64.b64encode(chunk).decode())
            needles.add(base64.urlsafe_b64encode(chunk).decode())
    return Secret(description, tuple(sorted(needles, key=len)), fix)


def gateway_secrets(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> list[Secret]:
    """Return the secrets of a gateway: its keys in the state directory and the credentials its policy reads.

    A key file that does not exist yet is left out.
    """
    environ = os.environ if environ is None else environ
    found: list[Secret | None] = []
    state_dir = Path(config.gateway.state_dir)
    key_variable = environ.get(files.DEFAULT_KEY_ENV_VAR, "")
    audit_key = key_variable.strip() or _read_text(files.AuditPaths.in_state_dir(state_dir).key)
    if audit_key:
        found.append(secret("mcp-guard's audit key", audit_key, STATE_DIR_FIX))
    stored = _read_bytes(state_dir / APPROVAL_KEY_FILE)
    approval_key = parse_key(stored)
    if approval_key is not None:
        found.append(secret("mcp-guard's approval key", approval_key, STATE_DIR_FIX))
        if stored != approval_key:
            # The file's hex text, as a tool that shows the file returns it, and in base64.
            text = stored.decode("ascii").strip()
            found.append(secret("mcp-guard's approval key", text, STATE_DIR_FIX))
    for variable, used_for in _credential_variables(config):
        value = environ.get(variable, "")
        if value:
            found.append(secret(f"the value of ${variable} ({used_for})", value))
    return [item for item in found if item is not None]


class SecretScan:
    """Stage: replace a tool result that contains one of `secrets` with an error.

    It runs just inside the audit stage, so the trail records the call as denied, with the
    reason, and never stores the secret in its preview.
    """

    def __init__(self, secrets: Sequence[Secret]) -> None:
        self._needles = tuple((needle, item) for item in secrets for needle in item.needles)
        self._shortest = min((len(needle) for needle, _ in self._needles), default=0)

    async def __call__(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        result = await next_handler(call)
        if not self._needles:
            return result
        found = self.find_secret(result)
        if found is None:
            return result
        return withhold(call, found, "the result")

    def find(self, value: Any) -> str | None:
        """Return the description of the first secret found in any string of `value`, or None."""
        found = self.find_secret(value)
        return None if found is None else found.description

    def find_secret(self, value: Any) -> Secret | None:
        """Return the first secret found in any string of `value`, or None."""
        for text in _strings(value):
            if len(text) < self._shortest:
                continue
            for needle, item in self._needles:
                if needle in text:
                    return item
        return None


def withhold(call: ToolCall, found: Secret, source: str) -> ToolResult:
    """Record `call` as denied because `source` ("the result", "the server's error") contains `found`.

    Returns the error the client gets in place of the result.
    """
    call.outcome = "denied"
    call.detail = withheld_detail(source, found)
    log.warning(
        "tool_result_withheld",
        call_id=call.call_id,
        client=call.client,
        tool=call.tool.exported,
        source=source,
        contains=found.description,
    )
    return tool_error(withheld_message("call", found))


def withheld_detail(source: str, found: Secret) -> str:
    """Return the audit detail of a `source` withheld because it contains `found`, without the secret."""
    return f"{source} contains {found.description}, so mcp-guard withheld it"


def withheld_message(kind: str, found: Secret) -> str:
    """Return the error that replaces the result of a `kind` ("call" or "request") that contains `found`."""
    message = (
        f"mcp-guard withheld the result of this {kind}: it contains {found.description}, "
        "which no result may carry."
    )
    return f"{message} {found.fix}" if found.fix else message


def _credential_variables(config: GatewayConfig) -> Iterator[tuple[str, str]]:
    """Yield each environment variable the policy reads a credential from, and what it is for."""
    for server_id, server in config.servers.items():
        templates: Mapping[str, str] = {}
        if isinstance(server, StdioServerConfig):
            templates = server.env_from
        elif isinstance(server, HttpServerConfig):
            templates = server.headers_from
        for template in templates.values():
            for variable in ENV_REFERENCE.findall(template):
                yield variable, f"a credential of server {server_id!r}"
    if config.approval.webhook_url_from:
        yield config.approval.webhook_url_from, "the approval webhook's address"
    if config.limits.redis_password_from:
        yield config.limits.redis_password_from, "the Redis password"
    if config.sandbox is not None:
        yield config.sandbox.e2b.api_key_from, "the E2B API key"


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
