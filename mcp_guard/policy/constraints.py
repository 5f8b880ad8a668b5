"""Argument constraints: compiled once per rule, checked against every call the rule matches.

A constraint on the argument name `path` applies to every value found under a key
named `path` anywhere in the arguments: at the top level, inside nested objects
and inside arrays, at any depth. Keys are compared with `argument_key`, so
`file_path` is also caught by a constraint on `filePath`. Walking the value that
was actually sent is what stops an argument smuggled past a schema. The tool's
input schema is used only to add checks: a default it declares for a missing
argument is checked as if it had been sent.

The walk uses an explicit stack and is bounded in depth and in the number of
values, so a deeply nested or huge value is a violation with a clear reason,
never a RecursionError. Each violation is one sentence naming the location
(`arguments.config.target.path`), a bounded rendering of the value and what is
allowed. Path checks are delegated to `paths.check_path_under`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mcp_guard.config.rules import MAX_ARGUMENT_NAME_LENGTH, ArgumentConstraints, argument_key
from mcp_guard.config.toml_text import toml_string
from mcp_guard.policy.paths import PathResolver, check_path_under, joined_path

# Maximum nesting depth of arrays and objects the walk enters. The top-level arguments object is level 0.
MAX_DEPTH = 64
# Maximum number of values (objects, arrays and scalars) the walk visits in one call's arguments.
MAX_NODES = 100_000
# Maximum length of a string that a regular expression is run on, in characters. Python's `re` has no
# time limit, so this bounds the cost of a simple pattern on a large value.
# NOTE: a pattern with nested repetition, such as (a+)+$, can still backtrack for a very long time on a
# crafted value shorter than this. Keep patterns in the policy file simple.
MAX_PATTERN_SUBJECT_CHARS = 1_000_000
# Maximum length of a value or key as shown in a violation sentence, in characters.
MAX_SHOWN_CHARS = 60
# NFKC composes at most a few code points into one, so a key that is still this long after '_' and '-'
# are removed cannot equal a constrained name, and is not normalised.
MAX_MATCHABLE_KEY_CHARS = 16 * MAX_ARGUMENT_NAME_LENGTH

Check = Callable[[Any], str | None]
"""Returns a phrase that completes "arguments.x (value) ..." when the value violates a constraint."""

_MISSING = object()
_SEPARATORS = re.compile(r"[_-]+")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Fence:
    """The compiled constraints on one argument name."""

    name: str
    """The argument name as written in the policy file."""
    required: bool
    max_items: int | None
    checks: tuple[Check, ...]
    """Checks applied to a scalar value, or to each element of an array value."""
    path_base: str | None = None
    """Folder that relative paths under this name are joined to, before they are checked and forwarded."""

    def violation(self, value: Any, location: str) -> str | None:
        """Return a sentence describing how `value` at `location` breaks this fence, or None."""
        if isinstance(value, list | tuple):
            return self._array_violation(value, location)
        if self.max_items is not None:
            return _sentence(location, value, f"is {_json_type(value)}, but max_items applies only to arrays")
        for check in self.checks:
            phrase = check(value)
            if phrase is not None:
                return _sentence(location, value, phrase)
        return None

    def _array_violation(self, value: Sequence[Any], location: str, depth: int = 0) -> str | None:
        if depth > MAX_DEPTH:
            return _sentence(location, value, f"nests arrays more than {MAX_DEPTH} levels deep")
        if self.max_items is not None and len(value) > self.max_items:
            return _sentence(location, value, f"has more than the maximum of {self.max_items:,} items")
        if len(value) > MAX_NODES:
            return _sentence(location, value, f"has more than the {MAX_NODES:,} items the gateway checks")
        for index, element in enumerate(value):
            if isinstance(element, list | tuple):
                # Arrays inside the array are held to the same limits, so nesting cannot hide items.
                problem = self._array_violation(element, f"{location}[{index}]", depth + 1)
                if problem is not None:
                    return problem
                continue
            for check in self.checks:
                phrase = check(element)
                if phrase is not None:
                    return _sentence(f"{location}[{index}]", element, phrase)
        return None


@dataclass(frozen=True)
class ArgumentFences:
    """The fences of one rule, by normalised argument name (`argument_key`)."""

    by_key: Mapping[str, Fence]
    joins_paths: bool = field(init=False)
    """Whether a fence sets `path_base`, so that `with_absolute_paths` may change the arguments."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "joins_paths", any(fence.path_base for fence in self.by_key.values()))

    @classmethod
    def compile(cls, arguments: Mapping[str, ArgumentConstraints], resolve: PathResolver) -> ArgumentFences:
        """Compile a rule's `arguments` table; regular expressions are compiled here, once."""
        return cls(
            {argument_key(name): _compile_fence(name, spec, resolve) for name, spec in arguments.items()}
        )

    def find_violation(
        self, arguments: Mapping[str, Any], input_schema: Mapping[str, Any] | None
    ) -> str | None:
        """Return a sentence describing the first constraint `arguments` break, or None when all hold."""
        missing = self._missing_violation(arguments, input_schema)
        if missing is not None:
            return missing
        return self._walk(arguments)

    def with_absolute_paths(
        self, arguments: Mapping[str, Any], input_schema: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Return a copy of `arguments` with each relative path under a `path_base` fence joined to its folder.

        The gateway forwards this copy, so the server opens the path that was checked, whatever
        folder it would resolve a relative path against. A missing argument whose schema default
        is a relative path is added, joined the same way. Values the path check rejects (such as
        one starting with "~") stay as sent, and so do values nested deeper than the walk checks.
        """
        joined = self._joined(arguments, 0)
        assert isinstance(joined, dict)
        for key, fence in self.by_key.items():
            names = _schema_names(input_schema, key) or [fence.name]
            if fence.path_base is None or any(name in joined for name in names):
                continue
            name, default = _schema_default(input_schema, key)
            if isinstance(default, str) and joined_path(default, fence.path_base) != default:
                joined[name] = joined_path(default, fence.path_base)
        return joined

    def _joined(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            return value  # `_walk` rejects values this deep
        if isinstance(value, Mapping):
            copy: dict[Any, Any] = {}
            for key, child in value.items():
                fence = self._fence_for(key)
                if fence is not None and fence.path_base is not None:
                    child = _joined_paths(child, fence.path_base, depth + 1)
                copy[key] = self._joined(child, depth + 1)
            return copy
        if isinstance(value, list | tuple):
            return [self._joined(child, depth + 1) for child in value]
        return value

    def _missing_violation(
        self, arguments: Mapping[str, Any], input_schema: Mapping[str, Any] | None
    ) -> str | None:
        for key, fence in self.by_key.items():
            # Presence is decided by the exact names the server reads: its schema's property names,
            # else the policy's spelling. A key that only normalises to the name, such as "TEXT"
            # for "text", leaves the server's own argument missing and its default in force.
            names = _schema_names(input_schema, key) or [fence.name]
            if any(name in arguments for name in names):
                continue
            if fence.required:
                return f"arguments.{fence.name} is missing, and the policy requires it."
            name, default = _schema_default(input_schema, key)
            if default is not _MISSING:
                # The server fills in its declared default, so that value must pass the fence too.
                return fence.violation(default, f"arguments.{name} (missing, so the schema default)")
        return None

    def _walk(self, arguments: Mapping[str, Any]) -> str | None:
        stack: list[tuple[Any, str, int]] = [(arguments, "arguments", 0)]
        visited = 1
        while stack:
            value, location, depth = stack.pop()
            if isinstance(value, Mapping):
                children = [(child, _key_location(location, key), key) for key, child in value.items()]
            elif isinstance(value, list | tuple):
                children = [(child, f"{location}[{index}]", None) for index, child in enumerate(value)]
            else:
                continue
            if not children:
                continue
            if depth + 1 > MAX_DEPTH:
                return f"{location} is nested more than {MAX_DEPTH} levels deep; the policy rejects deeper values."
            visited += len(children)
            if visited > MAX_NODES:
                return (
                    f"The arguments contain more than {MAX_NODES:,} values; the policy rejects larger ones."
                )
            for child, child_location, key in children:
                fence = self._fence_for(key)
                problem = None if fence is None else fence.violation(child, child_location)
                if problem is not None:
                    return problem
            # Reversed, so that values are visited (and reported) in document order.
            stack.extend(
                (child, child_location, depth + 1) for child, child_location, _ in reversed(children)
            )
        return None

    def _fence_for(self, key: object) -> Fence | None:
        matchable = _matchable_key(key)
        return None if matchable is None else self.by_key.get(matchable)


def _joined_paths(value: Any, base: str, depth: int) -> Any:
    """Join a relative path, or each relative path in an array (at any depth), to `base`."""
    if isinstance(value, str):
        return joined_path(value, base)
    if isinstance(value, list | tuple) and depth <= MAX_DEPTH:
        return [_joined_paths(element, base, depth + 1) for element in value]
    return value


def _matchable_key(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    # Counting first keeps a huge key cheap: str.count is fast for every string kind. Characters that
    # NFKC turns into '_' or '-' are not counted here, so a long key is normalised in full (bounded by
    # the request size) rather than passed over: passing it over could let it slip past a fence.
    if len(key) - key.count("_") - key.count("-") > MAX_MATCHABLE_KEY_CHARS and key.isascii():
        return None
    # Stripping before normalising only lets NFKC compose characters that an underscore separated,
    # which makes more keys match, never fewer.
    return argument_key(_SEPARATORS.sub("", key))


def _compile_fence(name: str, spec: ArgumentConstraints, resolve: PathResolver) -> Fence:
    checks: list[Check] = []
    if spec.max_length is not None:
        checks.append(_max_length(spec.max_length))
    if spec.one_of is not None:
        checks.append(_one_of(spec.one_of))
    if spec.minimum is not None or spec.maximum is not None:
        checks.append(_number_range(spec.minimum, spec.maximum))
    if spec.no_leading_dash:
        checks.append(_no_leading_dash)
    if spec.full_match is not None:
        checks.append(_full_match(re.compile(spec.full_match)))
    if spec.never_contains is not None:
        checks.append(_never_contains(re.compile(spec.never_contains)))
    if spec.url_schemes is not None or spec.url_hosts is not None:
        checks.append(_url(spec.url_schemes, spec.url_hosts))
    if spec.path_under is not None:
        checks.append(_path_under(spec.path_under, spec.path_base, resolve))
    return Fence(
        name=name,
        required=spec.required,
        max_items=spec.max_items,
        checks=tuple(checks),
        path_base=spec.path_base,
    )


def _max_length(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return _wrong_type(value, "max_length", "strings")
        if len(value) > limit:
            return f"is {len(value):,} characters long, longer than the maximum of {limit:,}"
        return None

    return check


def _one_of(options: Sequence[Any]) -> Check:
    allowed = ", ".join(_render(option) for option in options)

    def check(value: Any) -> str | None:
        # Compared by exact type as well as value: in Python, True == 1 == 1.0.
        if any(type(value) is type(option) and value == option for option in options):
            return None
        return f"is not one of the allowed values ({allowed})"

    return check


def _number_range(minimum: float | None, maximum: float | None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _wrong_type(value, "minimum/maximum", "numbers")
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        if minimum is not None and value < minimum:
            return f"is less than the minimum of {minimum}"
        if maximum is not None and value > maximum:
            return f"is greater than the maximum of {maximum}"
        return None

    return check


def _no_leading_dash(value: Any) -> str | None:
    if not isinstance(value, str):
        return _wrong_type(value, "no_leading_dash", "strings")
    # Leading whitespace is skipped because a server that splits a command line on it would see the dash.
    if value.lstrip().startswith("-"):
        return "starts with '-', so a command-line tool could read it as an option"
    return None


def _full_match(pattern: re.Pattern[str]) -> Check:
    def check(value: Any) -> str | None:
        problem = _pattern_subject_problem(value, "full_match")
        if problem is not None:
            return problem
        # fullmatch must consume the whole string: unlike `$`, it does not stop before a final newline.
        if pattern.fullmatch(value) is None:
            return f"does not match the required pattern {toml_string(pattern.pattern)}"
        return None

    return check


def _never_contains(pattern: re.Pattern[str]) -> Check:
    def check(value: Any) -> str | None:
        problem = _pattern_subject_problem(value, "never_contains")
        if problem is not None:
            return problem
        found = pattern.search(value)
        if found is not None:
            return (
                f"contains {_render(found.group())}, which the pattern {toml_string(pattern.pattern)} forbids"
            )
        return None

    return check


def _pattern_subject_problem(value: Any, constraint: str) -> str | None:
    if not isinstance(value, str):
        return _wrong_type(value, constraint, "strings")
    if len(value) > MAX_PATTERN_SUBJECT_CHARS:
        return (
            f"is {len(value):,} characters long, and patterns are only matched against strings of up to "
            f"{MAX_PATTERN_SUBJECT_CHARS:,} characters"
        )
    return None


def _url(schemes: Sequence[str] | None, hosts: Sequence[str] | None) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return _wrong_type(value, "url_schemes/url_hosts", "strings")
        return _url_problem(value, schemes, hosts)

    return check


def _url_problem(value: str, schemes: Sequence[str] | None, hosts: Sequence[str] | None) -> str | None:
    # urlsplit silently drops tabs and newlines, and browsers read '\' as '/', so both parsers
    # could see a different host than this check: such URLs are rejected outright.
    if any(char <= " " or char == "\x7f" or char == "\\" for char in value):
        return "contains whitespace, a control character or a backslash, which URLs must not contain"
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced "[" in the host, for one
        return "is not a valid URL"
    if schemes is not None and parts.scheme.lower() not in schemes:
        return f"does not use an allowed URL scheme ({', '.join(schemes)})"
    if "@" in parts.netloc:
        return "contains user information before '@', which can disguise the real host"
    if hosts is None:
        return None
    host = parts.hostname or ""
    if not host.isascii():
        return "has a non-ASCII host name; send it in its ASCII (xn--) form"
    if host not in hosts:
        return f"is not a URL on an allowed host ({', '.join(hosts)})"
    return None


def _path_under(roots: Sequence[str], base: str | None, resolve: PathResolver) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return _wrong_type(value, "path_under", "strings")
        return check_path_under(value, roots, base, resolve)

    return check


def _schema_names(input_schema: Mapping[str, Any] | None, key: str) -> list[str]:
    """Return the schema's property names that normalise to `key`."""
    properties = (input_schema or {}).get("properties")
    if not isinstance(properties, Mapping):
        return []
    return [name for name in properties if isinstance(name, str) and argument_key(name) == key]


def _schema_default(input_schema: Mapping[str, Any] | None, key: str) -> tuple[str, Any]:
    properties = (input_schema or {}).get("properties")
    if not isinstance(properties, Mapping):
        return key, _MISSING
    for name, schema in properties.items():
        if isinstance(name, str) and argument_key(name) == key and isinstance(schema, Mapping):
            return name, schema.get("default", _MISSING)
    return key, _MISSING


def _wrong_type(value: Any, constraint: str, expected: str) -> str:
    return f"is {_json_type(value)}, but the {constraint} constraint applies only to {expected}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object"


def _sentence(location: str, value: Any, phrase: str) -> str:
    return f"{location} ({_render(value)}) {phrase}."


def _render(value: Any) -> str:
    """Render a value as bounded JSON, so 1, "1" and true stay distinguishable."""
    if isinstance(value, str):
        shown = json.dumps(value[:MAX_SHOWN_CHARS])
        return shown if len(value) <= MAX_SHOWN_CHARS else f'{shown[:-1]}..." ({len(value):,} characters)'
    if isinstance(value, list | tuple):
        return f"an array of {len(value):,} items"
    if isinstance(value, Mapping):
        return f"an object with {len(value):,} keys"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):  # an int of more than 4,300 digits, or a non-JSON object
        return f"a {type(value).__name__} too large or complex to show"


def _key_location(parent: str, key: object) -> str:
    if isinstance(key, str) and len(key) <= MAX_SHOWN_CHARS and _IDENTIFIER.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{_render(key)}]"
