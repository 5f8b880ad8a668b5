"""Reading a policy file into a `GatewayConfig`, with errors a person can act on.

A file is accepted whole or rejected whole: every problem found is reported in
one `ConfigError`, each naming the key path, the bad value and the fix.
Environment variables referenced by templates are checked for presence here,
but their values are only read when a connection is made (`resolve_templates`),
so secrets never sit in the config objects.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcp_guard.audit.redaction import Redactor
from mcp_guard.config.limits import check_limit_references
from mcp_guard.config.models import (
    ENV_REFERENCE,
    GatewayConfig,
    HttpServerConfig,
    StdioServerConfig,
)
from mcp_guard.config.oauth import check_oauth_subjects
from mcp_guard.config.problems import describe_errors
from mcp_guard.config.rules import check_api_key_hashes, check_references
from mcp_guard.errors import ConfigError

# tomllib's message when a double-quoted string contains a backslash that starts no escape.
UNESCAPED_BACKSLASH = "Unescaped '\\' in a string"

# A problem line about one rule: `rules[2].decision: ...` or `limits.rules[0].window: ...`.
_RULE_PROBLEM = re.compile(r"(?P<array>(?:limits\.)?rules)\[(?P<index>\d+)\](?P<rest>[^:]*):")

# Replaces `gateway.state_dir` when set. Like it, a relative path is taken from the policy file's folder.
STATE_DIR_ENV_VAR = "MCP_GUARD_STATE_DIR"


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    require_environment: bool = True,
) -> GatewayConfig:
    """Read, validate and resolve the policy file at `path`.

    Relative `cwd` and `state_dir` values are resolved against the file's folder, and
    `$MCP_GUARD_STATE_DIR`, when set, replaces `state_dir`. With `require_environment`, the
    variables the gateway as a whole needs (the webhook URL, the Redis password) must be set.
    A server's own variables are checked when it starts (`server_environment_problems`), so
    that the other servers serve without it. Commands that only read the gateway's state
    (audit, pins, approvals) need none of them.

    Raises:
        ConfigError: The file is missing, is not valid TOML, or breaks any rule.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(file),
            ["the file does not exist; name the policy file with --config FILE or $MCP_GUARD_CONFIG"],
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), [f"the file cannot be read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), [_toml_problem(exc)]) from None
    base = file.resolve().parent
    config = parse_config(
        _absolute_roots(data, base),
        source=str(file),
        environ=environ,
        require_environment=require_environment,
    )
    config = _resolve_paths(config, base)
    state_dir = (os.environ if environ is None else environ).get(STATE_DIR_ENV_VAR)
    if state_dir:
        # Lets gateways that share one policy file, and run at the same time, keep separate state.
        resolved = str((base / Path(state_dir).expanduser()).resolve())
        config = config.model_copy(
            update={"gateway": config.gateway.model_copy(update={"state_dir": resolved})}
        )
    return config


def parse_config(
    data: Mapping[str, Any],
    source: str = "<policy>",
    environ: Mapping[str, str] | None = None,
    *,
    require_environment: bool = True,
) -> GatewayConfig:
    """Validate already-parsed policy data.

    Raises:
        ConfigError: Any rule is broken or a referenced environment variable is unset.
    """
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _with_rule_names(describe_errors(exc.errors()), data)) from None
    problems = check_references(config.rules, config.clients, config.server_ids)
    problems += check_oauth_subjects(config.gateway.oauth, config.clients)
    problems += check_api_key_hashes(config.clients)
    problems += check_limit_references(config.limits, config.clients, config.server_ids)
    default = config.gateway.default_client
    if default is not None and default not in config.clients:
        problems.append(f"gateway.default_client: client {default!r} is not defined; add [clients.{default}]")
    anonymous = config.gateway.http.allow_unauthenticated_as
    if anonymous is not None and anonymous not in config.clients:
        problems.append(
            f"gateway.http.allow_unauthenticated_as: client {anonymous!r} is not defined; add [clients.{anonymous}]"
        )
    keyed = [
        name for name, client in config.clients.items() if client.api_key_hashes or client.api_key_hashes_from
    ]
    if anonymous is not None and keyed:
        problems.append(
            "gateway.http.allow_unauthenticated_as: it has no effect while a client has API keys "
            f"({', '.join(keyed)}); remove it, or remove the keys"
        )
    if anonymous is not None and config.gateway.oauth is not None:
        problems.append(
            "gateway.http.allow_unauthenticated_as: it has no effect while [gateway.oauth] is configured; "
            "remove one of them"
        )
    problems += _redaction_problems(config)
    if require_environment:
        problems += _missing_env_references(config, os.environ if environ is None else environ)
    if problems:
        raise ConfigError(source, problems)
    return config


def resolve_templates(templates: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Replace every `${VAR}` in each template with the value of VAR from `environ`.

    Raises:
        ConfigError: A referenced variable is not set.
    """
    resolved: dict[str, str] = {}
    for name, template in templates.items():
        for variable in ENV_REFERENCE.findall(template):
            if variable not in environ:
                raise ConfigError("environment", [f"{name}: environment variable {variable} is not set"])
        resolved[name] = ENV_REFERENCE.sub(lambda match: environ[match.group(1)], template)
    return resolved


def _toml_problem(exc: tomllib.TOMLDecodeError) -> str:
    if UNESCAPED_BACKSLASH in str(exc):
        # The usual cause is a regular expression or a Windows path in double quotes.
        return (
            f"invalid TOML: {exc}; in double quotes a backslash starts an escape, so write the value "
            "in single quotes ('...') so backslashes stay as written"
        )
    return f"invalid TOML: {exc}"


def _redaction_problems(config: GatewayConfig) -> list[str]:
    try:
        Redactor(extra_keys=config.audit.redact_keys, extra_patterns=config.audit.redact_patterns)
    except ValueError as exc:
        return [f"audit: {exc}"]
    return []


def server_environment_problems(
    server_id: str, server: StdioServerConfig | HttpServerConfig, environ: Mapping[str, str]
) -> list[str]:
    """Return one problem per variable that a server's `env_from` or `headers_from` needs and is not set.

    Such a server cannot start, and the gateway serves the others without it.
    """
    field = "env_from" if isinstance(server, StdioServerConfig) else "headers_from"
    templates = server.env_from if isinstance(server, StdioServerConfig) else server.headers_from
    # Worded without "NAME: value", which the log's redaction would read as a secret assignment.
    return [
        f"servers.{server_id}.{field}.{name} reads environment variable {variable}, which is not set; "
        "export it before starting mcp-guard"
        for name, template in templates.items()
        for variable in ENV_REFERENCE.findall(template)
        if variable not in environ
    ]


def _missing_env_references(config: GatewayConfig, environ: Mapping[str, str]) -> list[str]:
    """Return the variables that the gateway as a whole needs and that are not set.

    A server's own variables are left to `server_environment_problems`: without them only
    that server is unavailable.
    """
    problems = []
    webhook = config.approval.webhook_url_from
    if webhook is not None:
        url = environ.get(webhook)
        if url is None:
            problems.append(
                f"approval.webhook_url_from: environment variable {webhook} is not set; "
                "export it before starting mcp-guard"
            )
        elif not url.startswith(("http://", "https://")) or any(char.isspace() for char in url):
            # The value is never shown: it may hold the webhook's secret.
            problems.append(
                f"approval.webhook_url_from: environment variable {webhook} does not hold an http:// "
                "or https:// URL without spaces or line breaks; set it to the webhook's URL"
            )
    password = config.limits.redis_password_from
    if config.limits.store == "redis" and password is not None and password not in environ:
        problems.append(
            f"limits.redis_password_from: environment variable {password} is not set; "
            "export it before starting mcp-guard"
        )
    return problems


def _absolute_roots(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve relative `path_under` roots and `path_base` of rules against the policy file's folder."""
    rules = data.get("rules")
    if not isinstance(rules, list):
        return data
    resolved_rules = []
    for rule in rules:
        arguments = rule.get("arguments") if isinstance(rule, dict) else None
        if not isinstance(arguments, dict):
            resolved_rules.append(rule)
            continue
        resolved_arguments = {name: _absolute_fence(fence, base) for name, fence in arguments.items()}
        resolved_rules.append({**rule, "arguments": resolved_arguments})
    return {**data, "rules": resolved_rules}


def _absolute_fence(fence: Any, base: Path) -> Any:
    if not isinstance(fence, dict):
        return fence
    resolved = dict(fence)
    roots = fence.get("path_under")
    if isinstance(roots, list):
        resolved["path_under"] = [_absolute(root, base) for root in roots]
    if isinstance(fence.get("path_base"), str):
        resolved["path_base"] = _absolute(fence["path_base"], base)
    return resolved


def _absolute(path: Any, base: Path) -> Any:
    # A path starting with `~` stays as written, so validation rejects it instead of a folder named `~`.
    if not isinstance(path, str) or not path or path.startswith("~") or Path(path).is_absolute():
        return path
    return os.path.normpath(base / path)


def _resolve_paths(config: GatewayConfig, base: Path) -> GatewayConfig:
    servers: dict[str, StdioServerConfig | HttpServerConfig] = {}
    for server_id, server in config.servers.items():
        if isinstance(server, StdioServerConfig) and server.cwd is not None:
            server = server.model_copy(update={"cwd": str((base / server.cwd).resolve())})
        servers[server_id] = server
    state_dir = str((base / Path(config.gateway.state_dir).expanduser()).resolve())
    protected = [os.path.normpath(base / Path(path).expanduser()) for path in config.gateway.protected_paths]
    gateway = config.gateway.model_copy(update={"state_dir": state_dir, "protected_paths": protected})
    if gateway.oauth is not None:
        jwks_file = str((base / gateway.oauth.jwks_file).resolve())
        gateway = gateway.model_copy(
            update={"oauth": gateway.oauth.model_copy(update={"jwks_file": jwks_file})}
        )
    sandbox = config.sandbox
    if sandbox is not None and sandbox.wasm.pyodide_dir is not None:
        wasm = sandbox.wasm.model_copy(
            update={"pyodide_dir": str((base / sandbox.wasm.pyodide_dir).resolve())}
        )
        sandbox = sandbox.model_copy(update={"wasm": wasm})
    return config.model_copy(update={"servers": servers, "gateway": gateway, "sandbox": sandbox})


def _with_rule_names(lines: list[str], data: Mapping[str, Any]) -> list[str]:
    """Add the name to each line about one rule or limit, since a reader does not count `[[rules]]` from 0."""
    named: list[str] = []
    for line in lines:
        match = _RULE_PROBLEM.match(line)
        name = None
        if match is not None:
            table: Any = data.get("limits", {}) if match["array"] == "limits.rules" else data
            rules = table.get("rules") if isinstance(table, Mapping) else None
            index = int(match["index"])
            if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], Mapping):
                name = rules[index].get("name")
        if match is not None and isinstance(name, str):
            kind = "limit" if match["array"] == "limits.rules" else "rule"
            line = f"{match.group()[:-1]} ({kind} {name!r}):{line[match.end() :]}"
        named.append(line)
    return named
