"""Frozen models of the policy file.

The models only describe and validate; reading files and environment variables
is left to `loading.py`. Every model forbids unknown keys, so a typo is an
error rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

from mcp_guard.config.approval import ApprovalSettings
from mcp_guard.config.limits import LimitsSettings
from mcp_guard.config.oauth import OAuthSettings
from mcp_guard.config.rules import ClientConfig, RuleList, check_pattern
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID, SandboxSettings

DEFAULT_HTTP_PORT = 8765
DEFAULT_HTTP_PATH = "/mcp"
# The SDK's own default request body limit.
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024
# Claude Code shows a tool as `mcp__<server>__<tool>` and several model APIs reject names over
# 64 characters, so exported names stay well below 64 to leave room for such a client prefix.
DEFAULT_MAX_TOOL_NAME_LENGTH = 48
DEFAULT_PAGE_SIZE = 100
DEFAULT_CALL_TIMEOUT_SECONDS = 300.0
DEFAULT_STARTUP_TIMEOUT_SECONDS = 30.0
# Clients give up on a server that does not respond to `initialize` soon enough (Codex after 10 s
# by default), so the gateway responds sooner even while a server still starts (a first `npx` download).
DEFAULT_STARTUP_WAIT_SECONDS = 5.0

# Server ids and prefixes become part of exported names, so they use the exported character set.
IDENTIFIER_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Names of variables and headers that carry credentials. Their values belong in the
# environment, referenced with `env_from` / `headers_from`, never in the file.
SECRET_NAME = re.compile(
    r"(secret|passw|token|api[-_]?key|private[-_]?key|access[-_]?key|credential|authorization|cookie|^key$|_key$)",
    re.IGNORECASE,
)

ProtocolMode = Literal["auto", "legacy", "2026-07-28"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_templates(templates: dict[str, str]) -> dict[str, str]:
    for name, template in templates.items():
        if not ENV_REFERENCE.search(template):
            raise ValueError(
                f"{name} = {template!r} references no environment variable; "
                f'write the value as a template such as "${{MY_VAR}}" or "Bearer ${{MY_VAR}}"'
            )
    return templates


def _reject_literal_secrets(values: dict[str, str], template_field: str) -> dict[str, str]:
    for name in values:
        if SECRET_NAME.search(name):
            raise ValueError(
                f"{name!r} looks like a secret, and secrets are never stored in the policy file; "
                f'move it to {template_field} = {{ {name} = "${{ENV_VAR}}" }} and set ENV_VAR '
                "in the gateway's environment"
            )
    return values


class _ServerBase(_Frozen):
    prefix: Annotated[str | None, Field(pattern=IDENTIFIER_PATTERN)] = None
    """Prefix of the exported names (`<prefix>__<tool>`); defaults to the server id."""

    protocol: ProtocolMode = "auto"
    """Protocol era to speak: "auto" probes 2026-07-28 and falls back to the handshake."""

    call_timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] = DEFAULT_CALL_TIMEOUT_SECONDS
    """Maximum time one request to this server may take."""

    startup_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = DEFAULT_STARTUP_TIMEOUT_SECONDS
    """Maximum time from starting the connection to a listed catalogue."""

    read_only_tools: list[str] = []
    """Tools of this server that only read; a rule without `write = true` grants only these."""

    trust_annotations: StrictBool = False
    """Treat the server's `readOnlyHint` annotations as true. Off by default: they are hints."""

    allow_new_tools: StrictBool = False
    """Expose tools this server adds after its definitions were pinned, without review."""

    relay_questions: StrictBool = False
    """Pass this server's own form questions (elicitation) during a call on to the calling client's
    user, labelled with the server's name. Off by default: the server's questions are declined."""


class StdioServerConfig(_ServerBase):
    """A downstream server started as a child process and spoken to over its stdin and stdout."""

    command: Annotated[str, Field(min_length=1)]
    """Program to run, looked up on PATH."""

    args: list[str] = []
    """Arguments passed to the program."""

    cwd: str | None = None
    """Working directory; relative paths are resolved against the policy file's folder."""

    env: dict[str, str] = {}
    """Extra environment variables (no secrets), added on top of a safe base environment."""

    env_from: dict[str, str] = {}
    """Environment variables whose values are templates over the gateway's own environment."""

    @field_validator("env")
    @classmethod
    def _env_has_no_secrets(cls, values: dict[str, str]) -> dict[str, str]:
        return _reject_literal_secrets(values, "env_from")

    @field_validator("env_from")
    @classmethod
    def _env_from_templates(cls, values: dict[str, str]) -> dict[str, str]:
        return _check_templates(values)


class HttpServerConfig(_ServerBase):
    """A downstream server reached over streamable HTTP."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    """The server's MCP endpoint, for example "http://127.0.0.1:9000/mcp"."""

    headers: dict[str, str] = {}
    """Extra request headers (no secrets)."""

    headers_from: dict[str, str] = {}
    """Request headers whose values are templates over the gateway's environment."""

    @field_validator("headers")
    @classmethod
    def _headers_have_no_secrets(cls, values: dict[str, str]) -> dict[str, str]:
        return _reject_literal_secrets(values, "headers_from")

    @field_validator("headers_from")
    @classmethod
    def _headers_from_templates(cls, values: dict[str, str]) -> dict[str, str]:
        return _check_templates(values)

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, url: str) -> str:
        authority = url.split("://", 1)[1].split("/", 1)[0]
        if "@" in authority:
            raise ValueError(
                "the URL contains credentials; remove them and send them with headers_from instead"
            )
        return url


def _server_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return "stdio" if isinstance(value, StdioServerConfig) else "http"
    if not isinstance(value, dict):
        return None
    has_command, has_url = "command" in value, "url" in value
    if has_command == has_url:
        return None
    return "stdio" if has_command else "http"


ServerConfig = Annotated[
    Annotated[StdioServerConfig, Tag("stdio")] | Annotated[HttpServerConfig, Tag("http")],
    Discriminator(
        _server_kind,
        custom_error_type="server_kind",
        custom_error_message="a server needs exactly one of `command` (stdio) or `url` (streamable HTTP)",
    ),
]


class HttpSettings(_Frozen):
    """Settings of the streamable HTTP endpoint (`mcp-guard run --transport http`)."""

    host: str = "127.0.0.1"
    """Address to bind. The default accepts connections from this machine only."""

    port: Annotated[int, Field(ge=0, le=65_535)] = DEFAULT_HTTP_PORT
    """TCP port; 0 picks a free one."""

    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_-]*$")] = DEFAULT_HTTP_PATH
    """URL path of the MCP endpoint."""

    allowed_hosts: list[str] = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    """Accepted `Host` header values (DNS-rebinding protection); `name:*` allows any port."""

    allowed_origins: list[str] = []
    """Accepted `Origin` header values, for browser-based clients."""

    max_request_body_bytes: Annotated[int, Field(gt=0, le=1024 * 1024 * 1024)] = (
        DEFAULT_MAX_REQUEST_BODY_BYTES
    )
    """Largest request body accepted."""

    allow_unauthenticated_as: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] | None = None
    """Serve requests without credentials as this client. Only when no client has API keys:
    meant for a gateway that only this machine's user can reach."""


class GatewaySettings(_Frozen):
    """Settings of the gateway itself."""

    name: Annotated[str, Field(min_length=1, max_length=64)] = "mcp-guard"
    """Server name reported to clients."""

    state_dir: str = ".mcp-guard"
    """Folder for state that survives restarts; relative paths are resolved against the policy file."""

    startup_wait_seconds: Annotated[float, Field(ge=0, le=600)] = DEFAULT_STARTUP_WAIT_SECONDS
    """Maximum wait for the servers' first start before the gateway responds to its clients. A
    server that gets ready later joins then, and clients get a list-changed notification."""

    protected_paths: list[Annotated[str, Field(min_length=1)]] = []
    """More files and folders that no tool call may name, on top of mcp-guard's own files, for
    example `~/.ssh`. A folder protects everything in it. `~` is expanded; a relative path is resolved against
    the policy file."""

    max_tool_name_length: Annotated[int, Field(ge=16, le=64)] = DEFAULT_MAX_TOOL_NAME_LENGTH
    """Longest exported tool or prompt name; longer names are shortened with a hash."""

    page_size: Annotated[int, Field(ge=1, le=10_000)] = DEFAULT_PAGE_SIZE
    """Items per page in tools/list, prompts/list and resources/list results."""

    default_client: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] | None = None
    """Client profile a stdio gateway serves when `mcp-guard run` gets no `--client`."""

    http: HttpSettings = HttpSettings()

    oauth: OAuthSettings | None = None
    """Accept OAuth access tokens (JWTs) over HTTP, verified offline with keys from a JWKS file."""


class AuditSettings(_Frozen):
    """The audit trail of every call (an SQLite file in the state directory)."""

    enabled: StrictBool = True
    """Record every call. Turning it off leaves no trace of what agents did; it exists to measure
    the gateway without it."""

    on_failure: Literal["deny", "proceed"] = "deny"
    """The fate of a call whose audit record cannot be written: denied, or run unaudited."""

    key_env: str = "MCP_GUARD_AUDIT_KEY"
    """Environment variable that may hold the hash-chain key as hex; otherwise a key file in the state directory."""

    redact_keys: list[str] = []
    """More argument and field names whose values are secret, on top of the built-in list."""

    redact_patterns: dict[str, str] = {}
    """More secret value patterns: a name (shown in the marker) to a regular expression."""

    power_safe: StrictBool = False
    """Make each record survive a power cut, not only a crash or kill of the gateway: fsync on
    every commit, which costs several milliseconds per call on most disks."""

    retention_days: Annotated[float | None, Field(gt=0)] = None
    """Delete records older than this many days when the gateway starts."""

    max_rows: Annotated[int | None, Field(gt=0)] = None
    """Keep at most this many records, deleting the oldest when the gateway starts."""

    @model_validator(mode="after")
    def _patterns_compile(self) -> AuditSettings:
        for name, pattern in self.redact_patterns.items():
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"redact_patterns.{name}: {exc}") from None
        return self


class GatewayConfig(_Frozen):
    """A whole policy file."""

    gateway: GatewaySettings = GatewaySettings()
    audit: AuditSettings = AuditSettings()
    clients: dict[Annotated[str, Field(pattern=IDENTIFIER_PATTERN)], ClientConfig] = {}
    """Client profiles by name: who may call, in which groups and organisation, with which API keys."""
    rules: RuleList = []
    """The rules granting clients tools, with decisions and argument constraints, in file order."""
    servers: dict[Annotated[str, Field(pattern=IDENTIFIER_PATTERN)], ServerConfig] = {}
    """Downstream servers by id, in the order they are listed."""
    limits: LimitsSettings = LimitsSettings()
    """Rate limits, tool costs and where their counts are kept."""
    approval: ApprovalSettings = ApprovalSettings()
    """The ways calls under `approve` rules reach a person, and how long they wait."""
    sandbox: SandboxSettings | None = None
    """The `run_code` tool and the sandbox backend it runs code in; absent, no such tool exists."""

    @model_validator(mode="after")
    def _sandbox_id_reserved(self) -> GatewayConfig:
        if SANDBOX_SERVER_ID in self.servers:
            raise ValueError(
                f"the server id {SANDBOX_SERVER_ID!r} is reserved for the built-in run_code tool; "
                "rename that server"
            )
        return self

    @property
    def server_ids(self) -> list[str]:
        """Ids that rules may name: the configured servers, and `sandbox` when run_code is on."""
        builtin = [SANDBOX_SERVER_ID] if self.sandbox is not None else []
        return [*self.servers, *builtin]

    @model_validator(mode="after")
    def _prefixes_unique(self) -> GatewayConfig:
        owners: dict[str, str] = {}
        for server_id, server in self.servers.items():
            prefix = server.prefix or server_id
            if prefix in owners:
                raise ValueError(
                    f"servers {owners[prefix]!r} and {server_id!r} both use the prefix {prefix!r}; "
                    "give one of them another `prefix`"
                )
            owners[prefix] = server_id
        return self

    def prefix_of(self, server_id: str) -> str:
        """Return the prefix of the names exported for `server_id`."""
        return self.servers[server_id].prefix or server_id
