"""Turning a client's server entries into policy server tables, with the secrets moved out.

Each entry becomes the `[servers.ID]` table the gateway needs. Values that carry
credentials never stay in the table. They become `env_from` or `headers_from` templates
over a variable of the gateway's own environment. The client configuration written for the
gateway sets that variable, as the client used to set it for the server. The client's
placeholders (VS Code `${input:...}` and `${env:...}`, Claude Code `${VAR}`) are mapped the same
way, so the client still resolves them. Listing tools and writing files are left to others.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from mcp_guard.audit.redaction import DEFAULT_REDACTOR
from mcp_guard.config.models import SECRET_NAME, HttpServerConfig, StdioServerConfig
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID
from mcp_guard.downstream.connection import SAFE_BASE_ENVIRONMENT
from mcp_guard.errors import SetupError
from mcp_guard.setup.sources import ClientFile, ClientKind

MAX_SERVER_ID_LENGTH = 32
STDIO_KEYS = frozenset({"type", "command", "args", "env", "cwd"})
HTTP_KEYS = frozenset({"type", "url", "headers"})
# Keys a client uses for itself (descriptions, VS Code's development mode) that change nothing
# about how the server runs, so dropping them needs no warning.
HARMLESS_KEYS = frozenset({"description", "dev", "gallery", "version", "timeout", "name"})
# VS Code placeholders: ${input:ID}, ${env:NAME}, ${workspaceFolder}, ${userHome} and others.
VSCODE_PLACEHOLDER = re.compile(r"\$\{([A-Za-z]+)(?::([^}]*))?\}")
# Claude Code placeholders: ${VAR} and ${VAR:-default}.
CLAUDE_CODE_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_OPTION = re.compile(r"^--?[A-Za-z0-9_-]+$")

ServerKind = Literal["stdio", "http"]


@dataclass
class GatewayVariable:
    """A variable of the gateway's environment that an `env_from` or `headers_from` template reads."""

    name: str
    client_value: str
    """The value the client configuration sets: a value copied from it, or a client placeholder."""
    probe_value: str | None
    """The value init can use now to reach the server, or None when it is unknown here."""
    copied_secret: bool
    """Whether `client_value` is a credential copied from the client configuration."""
    servers: list[str] = field(default_factory=list)


@dataclass
class ImportedServer:
    """One server entry of the client, as a policy server table."""

    name: str
    """The name the client configuration gives the server."""
    server_id: str
    kind: ServerKind
    table: dict[str, Any]
    """The `[servers.ID]` keys, in the order they are written."""
    notes: list[str] = field(default_factory=list)
    """Facts about the import, written as comments above the table."""


@dataclass
class ImportResult:
    """Everything init took from one client configuration file."""

    client: ClientFile
    servers: list[ImportedServer]
    skipped: list[tuple[str, str]]
    """Entries left out, each with the reason."""
    variables: dict[str, GatewayVariable]
    warnings: list[str]
    inputs: list[Any]
    """VS Code input definitions that the gateway's variables use."""


def import_servers(client: ClientFile, environ: Mapping[str, str] | None = None) -> ImportResult:
    """Convert every server entry of `client`.

    Raises:
        SetupError: An entry is malformed (each problem names the entry and the key), or no
            entry can be imported.
    """
    importer = _Importer(client, os.environ if environ is None else environ)
    for name, entry in client.servers.items():
        importer.add(str(name), entry)
    if importer.problems:
        raise SetupError(str(client.path), importer.problems)
    if not importer.servers:
        reasons = [f"{name!r}: {reason}" for name, reason in importer.skipped]
        raise SetupError(str(client.path), ["no server could be imported", *reasons])
    return ImportResult(
        client=client,
        servers=importer.servers,
        skipped=importer.skipped,
        variables=importer.variables,
        warnings=importer.warnings,
        inputs=importer.used_inputs(),
    )


def sanitize_server_id(name: str, taken: set[str]) -> str:
    """Return an id for `name` that matches the policy's id pattern and is not in `taken` (any case)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")
    if not base or not base[0].isalpha():
        base = f"server-{base}".rstrip("-")
    base = base[:MAX_SERVER_ID_LENGTH].rstrip("-_")
    taken_lower = {item.lower() for item in taken} | {SANDBOX_SERVER_ID}
    candidate, number = base, 2
    while candidate.lower() in taken_lower:
        suffix = f"-{number}"
        candidate = base[: MAX_SERVER_ID_LENGTH - len(suffix)] + suffix
        number += 1
    return candidate


def environment_name(text: str) -> str:
    """Return `text` as an environment variable name: upper case, `_` for anything else."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").upper()
    if not name or name[0].isdigit():
        name = f"VAR_{name}"
    return name


@dataclass
class _Translated:
    """A client string with its placeholders rewritten as `${VAR}` references of the gateway."""

    template: str
    references: dict[str, tuple[str, str | None]]
    """Variable name to (the client's placeholder, its value now if known)."""
    unsupported: list[str]


class _Importer:
    def __init__(self, client: ClientFile, environ: Mapping[str, str]) -> None:
        self.client = client
        self.environ = environ
        self.servers: list[ImportedServer] = []
        self.skipped: list[tuple[str, str]] = []
        self.variables: dict[str, GatewayVariable] = {}
        self.warnings: list[str] = []
        self.problems: list[str] = []
        self._ids: set[str] = set()
        self._inputs_used: set[str] = set()

    def add(self, name: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            self.problems.append(f"server {name!r}: the entry must be a JSON object")
            return
        reason = _unsupported_reason(entry)
        if reason is not None:
            self.skipped.append((name, reason))
            return
        kind: ServerKind = "stdio" if "command" in entry else "http"
        server_id = sanitize_server_id(name, self._ids)
        server = ImportedServer(name=name, server_id=server_id, kind=kind, table={})
        before = len(self.problems)
        if kind == "stdio":
            self._stdio(server, entry)
        else:
            self._http(server, entry)
        if len(self.problems) > before:
            return
        ignored = sorted(set(entry) - (STDIO_KEYS if kind == "stdio" else HTTP_KEYS) - HARMLESS_KEYS)
        if ignored:
            self.warnings.append(
                f"server {_shown(name)}: ignored keys {', '.join(ignored)}, which mcp-guard has no setting for"
            )
        invalid = _validation_problem(server)
        if invalid is not None:
            self._forget(server)
            self.skipped.append((name, invalid))
            return
        self._ids.add(server_id)
        self.servers.append(server)

    def used_inputs(self) -> list[Any]:
        inputs = self.client.data.get("inputs")
        if not isinstance(inputs, list):
            return []
        return [item for item in inputs if isinstance(item, dict) and item.get("id") in self._inputs_used]

    # Stdio servers.

    def _stdio(self, server: ImportedServer, entry: dict[str, Any]) -> None:
        command = entry.get("command")
        if not isinstance(command, str) or not command:
            self.problems.append(f"server {_shown(server.name)}: 'command' must be a non-empty string")
            return
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(arg, str | int | float) for arg in args):
            self.problems.append(f"server {_shown(server.name)}: 'args' must be a list of strings")
            return
        env = self._string_map(server, entry, "env")
        if env is None:
            return
        server.table["command"] = self._command(server, self._plain(server, "command", command), env)
        server.table["args"] = [self._plain(server, f"args[{i}]", str(arg)) for i, arg in enumerate(args)]
        self._warn_secret_args(server, server.table["args"])
        cwd = entry.get("cwd")
        if isinstance(cwd, str) and cwd:
            server.table["cwd"] = self._plain(server, "cwd", cwd)
            if not Path(server.table["cwd"]).is_absolute():
                server.notes.append("NOTE: a relative cwd is resolved against this policy file's folder.")
        elif self.client.project is not None:
            # The client starts a project's servers in the project folder, so relative arguments
            # such as "." name it; the gateway may be started anywhere.
            server.table["cwd"] = str(self.client.project)
        server.table["env"], server.table["env_from"] = self._split_secrets(server, env, "env")

    def _command(self, server: ImportedServer, command: str, env: dict[str, str]) -> str:
        if os.sep in command or (os.altsep and os.altsep in command):
            return command
        search_path = env.get("PATH") or self.environ.get("PATH")
        found = shutil.which(command, path=search_path)
        if found is None:
            self.warnings.append(
                f"server {_shown(server.name)}: {command!r} was not found on PATH; the gateway looks it up on "
                "the PATH it is started with, so give the client an env PATH that contains it"
            )
            return command
        server.notes.append(f"command was {command!r} in the client configuration, found on this PATH.")
        return os.path.abspath(found)

    def _warn_secret_args(self, server: ImportedServer, args: list[str]) -> None:
        for index, arg in enumerate(args):
            previous = args[index - 1] if index else ""
            option_secret = bool(SECRET_OPTION.match(previous)) and _is_secret_name(previous.lstrip("-"))
            if option_secret or DEFAULT_REDACTOR.redact_text(arg) != arg:
                self.warnings.append(
                    f"server {_shown(server.name)}: args[{index}] looks like a credential and is copied "
                    "into the policy file as it is, because the gateway passes arguments unchanged; "
                    "if the server can read it from an environment variable, move it there"
                )
                server.notes.append(f"NOTE: args[{index}] looks like a credential; see init's warning.")

    # HTTP servers.

    def _http(self, server: ImportedServer, entry: dict[str, Any]) -> None:
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            self.problems.append(f"server {_shown(server.name)}: 'url' must be a non-empty string")
            return
        headers = self._string_map(server, entry, "headers")
        if headers is None:
            return
        server.table["url"] = self._plain(server, "url", url)
        server.table["headers"], server.table["headers_from"] = self._split_secrets(
            server, headers, "headers"
        )

    # Secrets and placeholders.

    def _split_secrets(
        self, server: ImportedServer, values: dict[str, str], field_name: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Split a map into plain values and templates over the gateway's variables."""
        plain: dict[str, str] = {}
        templates: dict[str, str] = {}
        for name, value in values.items():
            translated = self._translate(server, f"{field_name}.{name}", value, expand_references=True)
            if translated.references:
                for variable, (placeholder, now) in translated.references.items():
                    self._variable(server, variable, placeholder, now, copied_secret=False)
                templates[name] = translated.template
            elif _is_secret_name(name) or DEFAULT_REDACTOR.redact_text(value) != value:
                preferred = name if field_name == "env" else f"{server.server_id}_{name}"
                variable = self._allocate(server, environment_name(preferred), value)
                self._variable(server, variable, value, value, copied_secret=True)
                templates[name] = f"${{{variable}}}"
            else:
                plain[name] = translated.template
        return plain, templates

    def _allocate(self, server: ImportedServer, preferred: str, client_value: str) -> str:
        candidates = [preferred, environment_name(f"{server.server_id}_{preferred}")]
        candidates += [f"{candidates[1]}_{number}" for number in range(2, 100)]
        for candidate in candidates:
            if candidate.startswith("MCP_GUARD_") or candidate in SAFE_BASE_ENVIRONMENT:
                continue
            existing = self.variables.get(candidate)
            if existing is None or existing.client_value == client_value:
                return candidate
        raise AssertionError("no free variable name")  # 100 servers would need the same name first

    def _variable(
        self, server: ImportedServer, name: str, client_value: str, now: str | None, *, copied_secret: bool
    ) -> None:
        variable = self.variables.setdefault(
            name, GatewayVariable(name, client_value, now, copied_secret=copied_secret)
        )
        if server.server_id not in variable.servers:
            variable.servers.append(server.server_id)

    def _plain(self, server: ImportedServer, key: str, value: str) -> str:
        """Return a value where only path placeholders can be resolved, warning about the rest."""
        translated = self._translate(server, key, value, expand_references=False)
        for placeholder in translated.unsupported:
            self.warnings.append(
                f"server {_shown(server.name)}: {key} contains {placeholder}, which the gateway does not "
                "expand there; replace it with the value in the policy file"
            )
        return translated.template

    def _translate(
        self, server: ImportedServer, key: str, value: str, *, expand_references: bool
    ) -> _Translated:
        kind = self.client.kind
        if kind == "claude-desktop":
            return _Translated(value, {}, [])
        pattern = VSCODE_PLACEHOLDER if kind == "vscode" else CLAUDE_CODE_PLACEHOLDER
        result = _Translated("", {}, [])

        def replace(match: re.Match[str]) -> str:
            path = self._path_placeholder(server, key, kind, match)
            if path is not None:
                return path
            reference = self._reference(kind, match) if expand_references else None
            if reference is None:
                result.unsupported.append(match.group(0))
                return match.group(0)
            variable, now = reference
            variable = self._allocate(server, variable, match.group(0))
            result.references[variable] = (match.group(0), now)
            return f"${{{variable}}}"

        result.template = pattern.sub(replace, value)
        return result

    def _path_placeholder(
        self, server: ImportedServer, key: str, kind: ClientKind, match: re.Match[str]
    ) -> str | None:
        if kind != "vscode" or match.group(2) is not None:
            return None
        if match.group(1) == "workspaceFolder":
            if self.client.project is None:
                self.problems.append(_unknown_workspace(server, key, self.client.path))
                return match.group(0)
            return str(self.client.project)
        if match.group(1) == "userHome":
            return str(Path.home())
        return None

    def _reference(self, kind: ClientKind, match: re.Match[str]) -> tuple[str, str | None] | None:
        """Return the gateway variable a client placeholder becomes, and its value now if known."""
        if kind == "claude-code":
            name, default = match.group(1), match.group(2)
            return name, self.environ.get(name, default)
        scope, argument = match.group(1), match.group(2)
        if scope == "env" and argument:
            return environment_name(argument), self.environ.get(argument)
        if scope == "input" and argument:
            self._inputs_used.add(argument)
            name = environment_name(argument)
            # VS Code prompts for the value when it starts the server, so init can use only an exported one.
            return name, self.environ.get(name)
        return None

    def _string_map(self, server: ImportedServer, entry: dict[str, Any], key: str) -> dict[str, str] | None:
        values = entry.get(key, {})
        if not isinstance(values, dict):
            self.problems.append(f"server {_shown(server.name)}: {key!r} must be an object of strings")
            return None
        result: dict[str, str] = {}
        for name, value in values.items():
            if value is None:
                continue  # VS Code: null removes the variable, and the gateway never passes it anyway
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                self.problems.append(f"server {_shown(server.name)}: {key}.{name} must be a string")
                return None
            result[str(name)] = str(value)
        return result

    def _forget(self, server: ImportedServer) -> None:
        for name in list(self.variables):
            variable = self.variables[name]
            if server.server_id in variable.servers:
                variable.servers.remove(server.server_id)
                if not variable.servers:
                    del self.variables[name]


def guarded_policy(entry: Any) -> Path | None:
    """Return the policy file a server entry runs mcp-guard with, or None if it runs something else.

    init writes such entries itself: `mcp-guard run --config FILE`, or `python -m mcp_guard run
    --config FILE`. Importing one would make the gateway start itself.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return None
    args = [str(arg) for arg in entry.get("args", []) if isinstance(arg, str | int | float)]
    command = Path(str(entry["command"])).name
    if command == "mcp-guard":
        rest = args
    elif command.startswith("python") and args[:2] == ["-m", "mcp_guard"]:
        rest = args[2:]
    else:
        return None
    if "run" not in rest:
        return None
    for index, arg in enumerate(rest):
        if arg in ("--config", "-c") and index + 1 < len(rest):
            return Path(rest[index + 1]).expanduser()
        if arg.startswith("--config="):
            return Path(arg.removeprefix("--config=")).expanduser()
    return Path("mcp-guard.toml")


def _unsupported_reason(entry: dict[str, Any]) -> str | None:
    if guarded_policy(entry) is not None:
        return (
            "it runs mcp-guard itself, whose policy lists the servers it guards; add new servers to "
            "that policy's [servers], or import a copy of the client file from before it ran mcp-guard"
        )
    kind = entry.get("type")
    if kind == "sse":
        return (
            "it uses the older HTTP+SSE transport, and the gateway speaks streamable HTTP only; "
            "if the server also serves streamable HTTP, add it with that URL and type 'http'"
        )
    if entry.get("sandboxEnabled") is True:
        return (
            "VS Code runs it in its sandbox (sandboxEnabled), which the gateway cannot reproduce; "
            "keep it in VS Code's own configuration"
        )
    if entry.get("disabled") is True:
        return "it is disabled in the client configuration"
    if kind not in (None, "stdio", "http"):
        return f"its type {kind!r} is not one the gateway can connect to (stdio or http)"
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        return "it needs exactly one of 'command' (stdio) or 'url' (HTTP)"
    if kind == "stdio" and not has_command:
        return "type 'stdio' needs a 'command'"
    if kind == "http" and not has_url:
        return "type 'http' needs a 'url'"
    url = entry.get("url")
    if isinstance(url, str) and not url.startswith(("http://", "https://")):
        return "only http:// and https:// URLs are supported (not Unix sockets or named pipes)"
    return None


def _validation_problem(server: ImportedServer) -> str | None:
    model = StdioServerConfig if server.kind == "stdio" else HttpServerConfig
    try:
        model.model_validate(server.table)
    except ValidationError as exc:
        # The value is never shown: it may contain a credential.
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"])
        return f"{location}: {error['msg'].removeprefix('Value error, ')}"
    return None


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) or DEFAULT_REDACTOR.is_secret_key(name)


def _unknown_workspace(server: ImportedServer, key: str, path: Path) -> str:
    # Outside .vscode/, the file belongs to a VS Code profile, which every workspace shares.
    return (
        f"server {_shown(server.name)}: {key} uses ${{workspaceFolder}}, which in a user-profile file "
        f"such as {path} is the folder VS Code has open; name that folder with --workspace DIR"
    )


def _shown(text: str) -> str:
    """Quote a name from the client file for a message, with control characters escaped."""
    return repr(text)
