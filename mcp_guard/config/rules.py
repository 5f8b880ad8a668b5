"""Frozen models of the policy file's `[clients.*]` and `[[rules]]` sections.

The models validate each section on its own: patterns compile, datetimes carry a
timezone, windows are ordered, rule names are unique. Whether a rule names
clients, groups and servers that exist depends on the other sections, so
`check_references` does that once the whole file is parsed. Evaluating rules is
left to `mcp_guard.policy`.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

# In a rule's `clients`, `server` or `tools`, stands for every client, server or tool.
WILDCARD = "*"
# Client ids and group names appear in logs and audit records, so they use a small character set.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# The built-in server that owns the run_code tool (see `sandbox.py`); rules name it like any other.
SANDBOX_SERVER_ID = "sandbox"
API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
URL_SCHEME_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*$"
MAX_RULE_NAME_LENGTH = 128
# Maximum length of an argument name in a rule. Keys in a call that are far longer cannot match
# one, so the walk skips normalising them.
MAX_ARGUMENT_NAME_LENGTH = 64
# An upper bound keeps `first_use + active_for_seconds` far from datetime's year 9999 limit.
MAX_ACTIVE_FOR_SECONDS = 10 * 365 * 24 * 3600
DEFAULT_RULE_WRITE = False
# A pattern has no use for raw control characters, and one is most often a TOML escape such as \b
# read in double quotes. Tab, line feed and carriage return mean the same raw as escaped in a
# pattern, and a multi-line (?x) pattern contains them.
_PATTERN_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

RuleDecision = Literal["auto", "notify", "approve", "deny"]
ClientId = Annotated[str, Field(pattern=NAME_PATTERN)]
GroupName = Annotated[str, Field(pattern=NAME_PATTERN)]
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
Number = StrictInt | StrictFloat


def argument_key(name: str) -> str:
    """Return the form in which argument names are compared.

    A server built on pydantic with `populate_by_name` accepts a field under its alias and
    its own name (`filePath` and `file_path`), so names are compared after NFKC normalisation and
    case folding, with `_` and `-` removed. A constraint on `filePath` then also applies
    to `file_path`, `FILE-PATH` and `filepath`.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    return folded.replace("_", "").replace("-", "")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClientConfig(_Frozen):
    """A client of the gateway: who it is, which groups it is in and how it authenticates over HTTP."""

    organisation: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """Organisation the client belongs to, so that rate limits can be shared per organisation."""

    groups: list[GroupName] = []
    """Groups the client belongs to, so that rules can name a group instead of each client."""

    api_key_hashes: Annotated[list[str], Field(repr=False)] = []
    """SHA-256 hashes of the client's bearer keys, as "sha256:<64 lowercase hex digits>"."""

    api_key_hashes_from: Annotated[str, Field(pattern=ENV_VAR_PATTERN)] | None = None
    """Environment variable that contains more key hashes, separated by commas."""

    # OpenID Connect Core 1.0 §2 limits `sub` to 255 ASCII characters.
    oauth_subjects: list[Annotated[str, Field(min_length=1, max_length=255)]] = []
    """`sub` claims of OAuth access tokens that authenticate as this client (see `[gateway.oauth]`)."""

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_well_formed(cls, hashes: list[str]) -> list[str]:
        # The message never repeats the value: a malformed entry may be a key pasted by mistake.
        for index, entry in enumerate(hashes):
            if not API_KEY_HASH.match(entry):
                raise ValueError(
                    f"entry [{index}] is not written as 'sha256:<64 lowercase hex digits>'; store the "
                    "SHA-256 hash of the key (printf %s KEY | sha256sum), never the key itself"
                )
        return hashes


def check_pattern(pattern: str) -> str:
    """Return `pattern` if it is a regular expression without control characters that compiles.

    Raises:
        ValueError: The pattern contains a control character other than tab, line feed or
            carriage return (in double quotes, TOML turns `\\b` into a backspace), or does not compile.
    """
    control = _PATTERN_CONTROL_CHARACTER.search(pattern)
    if control is not None:
        code = ord(control.group())
        escape = " (a backspace: TOML reads \\b in double quotes as one)" if code == 0x08 else ""
        raise ValueError(
            f"the pattern contains the control character U+{code:04X}{escape}; write the pattern in "
            "single quotes ('...') so backslashes stay as written"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}; fix it (Python `re` syntax)") from None
    return pattern


def _require_folder(path: str) -> str:
    if not path:
        raise ValueError("empty folder; give an absolute path or one relative to the policy file")
    if "\0" in path:
        raise ValueError("the path contains a NUL character")
    if path.startswith("~"):
        raise ValueError("write the absolute path; ~ is not expanded")
    if not path.startswith("/"):
        raise ValueError("is not an absolute path; write it starting with '/'")
    return path


def _url_scheme(scheme: str) -> str:
    if "://" in scheme or scheme.endswith(":"):
        raise ValueError(f"write the scheme without '://': {scheme.split(':', 1)[0]}")
    if not re.match(URL_SCHEME_PATTERN, scheme):
        raise ValueError("is not a URL scheme; write a letter, then letters, digits, '+', '.' or '-' (https)")
    return scheme.lower()


def _url_host(host: str) -> str:
    if "://" in host or "/" in host or "@" in host:
        raise ValueError(f"write the host name only{_host_suggestion(host)}")
    return _ascii_host(host)


def _host_suggestion(text: str) -> str:
    """Return ": NAME" with the host name that `text`, a URL or host with extra parts, contains, or ""."""
    url = text.strip() if "://" in text else f"//{text.strip()}"
    try:
        name = urlsplit(url).hostname
    except ValueError:
        name = None
    return f": {name}" if name else ""


def _ascii_host(host: str) -> str:
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if not name:
        raise ValueError("a host name is empty; remove it or write the host")
    try:
        # Python's "idna" codec implements IDNA 2003. An ASCII name passes through unchanged.
        return name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"is not a valid host name ({exc}); write it in ASCII (xn--) form") from None


class ArgumentConstraints(_Frozen):
    """Constraints on every value passed under one argument name, at any depth of the arguments.

    When the value is an array, `max_items` applies to the array and every other
    constraint applies to each element. A value of a type a constraint cannot check
    (a number where `path_under` applies) violates it.
    """

    required: StrictBool = False
    """Reject calls that do not pass this argument at the top level, so the server's default is never used."""

    path_under: (
        Annotated[list[Annotated[str, AfterValidator(_require_folder)]], Field(min_length=1)] | None
    ) = None
    """Absolute folders the value must resolve into, after `..` and symlinks are resolved."""

    path_base: str | None = None
    """Absolute folder that relative paths are resolved against. Without it, relative paths are rejected."""

    max_length: Annotated[StrictInt, Field(ge=0)] | None = None
    """Maximum length of a string value, in characters (Unicode code points)."""

    full_match: str | None = None
    """Python regular expression the whole value must match (`re.fullmatch`)."""

    never_contains: str | None = None
    """Python regular expression that must not match anywhere in the value (`re.search`)."""

    one_of: Annotated[list[Scalar], Field(min_length=1)] | None = None
    """Allowed values, compared by type and value: 1, 1.0, true and "1" are four different values."""

    minimum: Number | None = None
    """Minimum allowed number (inclusive). The booleans true and false are not numbers."""

    maximum: Number | None = None
    """Maximum allowed number (inclusive)."""

    max_items: Annotated[StrictInt, Field(ge=0)] | None = None
    """Maximum number of elements of an array value."""

    url_schemes: Annotated[list[Annotated[str, AfterValidator(_url_scheme)]], Field(min_length=1)] | None = (
        None
    )
    """Allowed URL schemes, compared case-insensitively ("https")."""

    url_hosts: Annotated[list[Annotated[str, AfterValidator(_url_host)]], Field(min_length=1)] | None = None
    """Allowed URL host names, matched exactly (no subdomains), case-insensitively, in IDNA ASCII form."""

    no_leading_dash: StrictBool = False
    """Reject strings (and string elements of arrays) that start with "-", so they cannot pass as options."""

    @field_validator("path_base")
    @classmethod
    def _base_absolute(cls, base: str | None) -> str | None:
        return None if base is None else _require_folder(base)

    @field_validator("full_match", "never_contains")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        return None if pattern is None else check_pattern(pattern)

    @field_validator("one_of")
    @classmethod
    def _no_nan(cls, options: list[Any] | None) -> list[Any] | None:
        if options is not None and any(
            isinstance(option, float) and math.isnan(option) for option in options
        ):
            raise ValueError("nan never equals any value; remove it")
        return options

    @field_validator("minimum", "maximum")
    @classmethod
    def _finite(cls, bound: float | None) -> float | None:
        if bound is not None and not math.isfinite(bound):
            raise ValueError("the bound must be a finite number")
        return bound

    @model_validator(mode="after")
    def _consistent(self) -> ArgumentConstraints:
        # Checked first: a table with only path_base sets no constraint either, and this message gives the reason.
        if self.path_base is not None and self.path_under is None:
            raise ValueError("path_base only applies together with path_under; add path_under")
        checks = [getattr(self, name) for name in _VALUE_CONSTRAINTS]
        if not (self.required or self.no_leading_dash or any(check is not None for check in checks)):
            raise ValueError("the table sets no constraint; add one (path_under, max_length, one_of, ...)")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is greater than maximum ({self.maximum}); swap them")
        return self


_VALUE_CONSTRAINTS = (
    "path_under",
    "max_length",
    "full_match",
    "never_contains",
    "one_of",
    "minimum",
    "maximum",
    "max_items",
    "url_schemes",
    "url_hosts",
)


class RuleConfig(_Frozen):
    """One `[[rules]]` entry: which clients may call which tools, with which decision and constraints."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_RULE_NAME_LENGTH)]
    """Unique name, shown in every decision the rule produces."""

    clients: list[str] = []
    """Client ids the rule applies to; "*" applies it to every client."""

    groups: list[GroupName] = []
    """Groups whose clients the rule applies to."""

    server: Annotated[str, Field(min_length=1)]
    """Configured server id, or "*" for every server."""

    tools: list[Annotated[str, Field(min_length=1)]]
    """Tool names as the downstream server lists them (not the exported names), or "*" for all."""

    decision: RuleDecision
    """Outcome of a matching call: "auto" runs it, "notify" runs it and alerts, "approve" waits for a person,
    "deny" rejects it."""

    write: StrictBool = DEFAULT_RULE_WRITE
    """Whether the rule also grants tools that may write. When false, it grants only tools listed in the
    server's `read_only_tools`, or annotated `readOnlyHint: true` on a server with `trust_annotations`.
    Deny rules ignore this and cover every tool they name."""

    not_before: datetime | None = None
    """Start of the rule's window, as a datetime with a timezone (2026-12-01T09:00:00Z)."""

    not_after: datetime | None = None
    """End of the rule's window (inclusive), as a datetime with a timezone."""

    active_for_seconds: Annotated[StrictFloat, Field(gt=0, le=MAX_ACTIVE_FOR_SECONDS)] | None = None
    """How long the rule stays active after the client's first call under it, in seconds."""

    arguments: dict[
        Annotated[str, Field(min_length=1, max_length=MAX_ARGUMENT_NAME_LENGTH)], ArgumentConstraints
    ] = {}
    """Constraints by argument name. Each applies wherever that name occurs in the arguments."""

    @field_validator("clients")
    @classmethod
    def _client_names(cls, clients: list[str]) -> list[str]:
        for index, client in enumerate(clients):
            if client != WILDCARD and not re.match(NAME_PATTERN, client):
                raise ValueError(
                    f'entry [{index}] {client!r} is neither "*" nor a client id '
                    "(a letter or digit, then up to 63 letters, digits, '_', '.' or '-')"
                )
        return clients

    @field_validator("tools")
    @classmethod
    def _names_a_tool(cls, tools: list[str]) -> list[str]:
        if not tools:
            raise ValueError('the rule names no tool; list tool names, or "*" for every tool of the server')
        return tools

    @field_validator("not_before", "not_after", mode="before")
    @classmethod
    def _not_a_bare_date(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            raise ValueError(f"{value} is a date without a time; write {value}T00:00:00Z or another time")
        return value

    @field_validator("not_before", "not_after")
    @classmethod
    def _has_timezone(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no timezone; add one, for example {value.isoformat()}Z for UTC"
            )
        return value

    @field_validator("arguments")
    @classmethod
    def _argument_names_distinct(
        cls, arguments: dict[str, ArgumentConstraints]
    ) -> dict[str, ArgumentConstraints]:
        seen: dict[str, str] = {}
        for name in arguments:
            key = argument_key(name)
            if key in seen:
                raise ValueError(
                    f"{seen[key]!r} and {name!r} name the same argument (names are compared without case, "
                    "'_' and '-'); merge the two tables"
                )
            seen[key] = name
        return arguments

    @model_validator(mode="after")
    def _consistent(self) -> RuleConfig:
        if not self.clients and not self.groups:
            raise ValueError(
                'the rule names no client; set clients = ["*"] for everyone, or list clients or groups'
            )
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError(
                f"not_after ({self.not_after.isoformat()}) is not later than not_before "
                f"({self.not_before.isoformat()}); swap them or fix one"
            )
        if self.decision == "deny" and self.arguments:
            raise ValueError(
                "a deny rule rejects every call it matches, so `arguments` has no effect; remove it"
            )
        if self.decision == "deny" and self.active_for_seconds is not None:
            raise ValueError(
                "a deny rule is never started by a call, so active_for_seconds has no effect; "
                "use not_before and not_after"
            )
        return self


def _names_unique(rules: list[RuleConfig]) -> list[RuleConfig]:
    first_index: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.name in first_index:
            raise ValueError(
                f"rules[{first_index[rule.name]}] and rules[{index}] are both named {rule.name!r}; "
                "give each rule a unique name"
            )
        first_index[rule.name] = index
    return rules


RuleList = Annotated[list[RuleConfig], AfterValidator(_names_unique)]
"""The `[[rules]]` array in file order, with unique rule names."""


def check_api_key_hashes(clients: Mapping[str, ClientConfig]) -> list[str]:
    """Return one problem line for each API key hash that more than one client lists.

    A key must identify one client: a hash copied into a second client's table would give that
    key the rights of whichever client the gateway matched.
    """
    problems: list[str] = []
    owners: dict[str, str] = {}
    for name, client in clients.items():
        for position, key_hash in enumerate(client.api_key_hashes):
            owner = owners.setdefault(key_hash, name)
            if owner != name:
                problems.append(
                    f"clients.{name}.api_key_hashes[{position}]: the same hash is listed by client "
                    f"{owner!r}; a key must identify one client, so list it under one client only "
                    "and give the other client a key of its own (`mcp-guard keys new`)"
                )
    return problems


def check_references(
    rules: Sequence[RuleConfig], clients: Mapping[str, ClientConfig], server_ids: Collection[str]
) -> list[str]:
    """Return one problem line for each client, group or server a rule names that is not defined.

    Each line starts with the key path (`rules[2].clients[0]`), names the value and suggests a fix.
    """
    problems: list[str] = []
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        problems += audience_problems(where, f"rule {rule.name!r}", rule.clients, rule.groups, clients)
        if rule.server == SANDBOX_SERVER_ID and rule.server not in server_ids:
            problems.append(
                f"{where}.server: rule {rule.name!r} names the built-in server {rule.server!r} of the run_code "
                "tool, which is off; add a [sandbox] section to turn it on"
            )
        elif rule.server != WILDCARD and rule.server not in server_ids:
            problems.append(
                f"{where}.server: rule {rule.name!r} names server {rule.server!r}, which is not configured; "
                f'add [servers.{rule.server}], use "*" or fix the name{suggestion(rule.server, server_ids)}'
            )
    return problems


def audience_problems(
    where: str,
    what: str,
    named_clients: Sequence[str],
    named_groups: Sequence[str],
    clients: Mapping[str, ClientConfig],
) -> list[str]:
    """Return one problem line for each client or group that `what` (at key path `where`) names in vain."""
    groups = {group for client in clients.values() for group in client.groups}
    problems: list[str] = []
    for position, client in enumerate(named_clients):
        if client != WILDCARD and client not in clients:
            problems.append(
                f"{where}.clients[{position}]: {what} names client {client!r}, which is not "
                f"defined; add [clients.{client}] or fix the name{suggestion(client, clients)}"
            )
    for position, group in enumerate(named_groups):
        if group not in groups:
            problems.append(
                f"{where}.groups[{position}]: {what} names group {group!r}, but no client is "
                f"in it; add it to a client's groups or fix the name{suggestion(group, groups)}"
            )
    return problems


def suggestion(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if known:
        return f" (defined: {', '.join(sorted(known))})"
    return ""
