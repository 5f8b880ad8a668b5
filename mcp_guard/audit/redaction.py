"""Masking of secrets before anything is stored, hashed or logged.

`Redactor` is pure: it takes JSON-like values or text and returns masked copies.
Values under secret-looking keys are replaced whole; free text is scanned for
known token formats (see `patterns`). Every secret found becomes a marker such
as `[REDACTED:github-token]`. Long text is scanned in full, never cut first, so
a secret cannot hide past a length limit; the patterns are linear-time for that
reason. `redact_event` applies the default redactor to structlog events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import structlog
from pydantic import JsonValue

from mcp_guard.audit import patterns
from mcp_guard.audit.patterns import ValuePattern, marker

# Nesting deeper than this is replaced by a marker rather than walked, which bounds
# the recursion. JSON parsers stop well before it for untrusted input.
MAX_DEPTH = 200
# How many names `redact_name` remembers, and keys `is_secret_key` remembers, and the longest of each.
NAME_CACHE_SIZE = 1024
NAME_CACHE_MAX_CHARS = 200
_PATTERN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class Redactor:
    """Masks secrets in JSON-like values, free text and log events.

    Args:
        extra_keys: More key names whose values are secret. They match like the built-in
            names: case-insensitively, ignoring `-`, `_` and case changes, as the last
            words of a key ("pin" matches "card_pin" and "cardPin" but not "spin").
        extra_patterns: More value patterns, name to regex. The name appears in the
            marker. If the regex has a group named `secret`, only that group is masked.

    Raises:
        ValueError: A name or regex is invalid; the message names it.

    NOTE: extra patterns are run as given. Python's `re` has no timeout, so a pattern
    with nested repeats such as `(a+)+` can take exponential time on hostile input.
    """

    def __init__(
        self, extra_keys: Sequence[str] = (), extra_patterns: Mapping[str, str] | None = None
    ) -> None:
        self._key_names = patterns.SECRET_KEY_NAMES | {_normalize_extra_key(key) for key in extra_keys}
        extra = [_compile_extra_pattern(name, regex) for name, regex in (extra_patterns or {}).items()]
        self._patterns: tuple[ValuePattern, ...] = (*patterns.BUILTIN_PATTERNS, *extra)
        # Most text contains no trigger of a built-in pattern, which one scan for all of them
        # finds. The operator's patterns have no trigger and scan every text.
        self._builtin_trigger = patterns.combined_trigger(patterns.BUILTIN_PATTERNS)
        self._names: dict[str, str] = {}
        self._secret_keys: dict[str, bool] = {}

    def is_secret_key(self, key: str) -> bool:
        """Return whether values stored under `key` are treated as secrets."""
        secret = self._secret_keys.get(key)
        if secret is None:
            words = patterns.key_words(key)
            secret = bool(patterns.SECRET_KEY_WORDS.intersection(words)) or any(
                "".join(words[start:]) in self._key_names for start in range(len(words))
            )
            if len(key) <= NAME_CACHE_MAX_CHARS:
                if len(self._secret_keys) >= NAME_CACHE_SIZE:
                    self._secret_keys.clear()
                self._secret_keys[key] = secret
        return secret

    def redact_text(self, text: str) -> str:
        """Return `text` with every secret the patterns find replaced by a marker."""
        text = patterns.mask_private_key_blocks(text)
        start = 0
        if self._builtin_trigger is not None and self._builtin_trigger.search(text) is None:
            start = len(patterns.BUILTIN_PATTERNS)
        for pattern in self._patterns[start:]:
            text = pattern.replace(text)
        return patterns.mask_assignments(text, self.is_secret_key)

    def redact_name(self, name: str) -> str:
        """Return `redact_text(name)` for a name that repeats from call to call, such as a client or tool.

        Short names are remembered, so a name is scanned once rather than on every call.
        """
        masked = self._names.get(name)
        if masked is None:
            masked = self.redact_text(name)
            if len(name) <= NAME_CACHE_MAX_CHARS:
                if len(self._names) >= NAME_CACHE_SIZE:
                    self._names.clear()
                self._names[name] = masked
        return masked

    def redact_value(self, value: JsonValue) -> JsonValue:
        """Return a masked copy of a JSON-like value.

        Values under secret keys are replaced whole (`None` and booleans are kept, as
        they carry no secret). Strings, including dictionary keys, are scanned with
        `redact_text`.
        """
        return self._redact_value(value, 0)

    def redact_event(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Mask secrets in a structlog event; use it as a processor.

        Exception info is formatted first (structlog's `format_exc_info`), so secrets
        in tracebacks are masked too. Keys starting with `_` are structlog's own and
        are left alone. Objects of other types are masked through their `repr`, the
        form the JSON renderer would print.
        """
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        for key, value in list(event_dict.items()):
            if key.startswith("_"):
                continue
            if (
                key != "event"
                and self.is_secret_key(key)
                and value is not None
                and not isinstance(value, bool)
            ):
                event_dict[key] = marker("secret-field")
            else:
                event_dict[key] = self._redact_log_value(value)
        return event_dict

    def _redact_value(self, value: JsonValue, depth: int) -> JsonValue:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, list | tuple):
            return self._redact_list(value, depth)
        if isinstance(value, Mapping):
            return self._redact_mapping(value, depth)
        return value

    def _redact_list(self, items: Sequence[JsonValue], depth: int) -> JsonValue:
        if depth >= MAX_DEPTH:
            return marker("nesting-too-deep")
        return [self._redact_value(item, depth + 1) for item in items]

    def _redact_mapping(self, mapping: Mapping[str, JsonValue], depth: int) -> JsonValue:
        if depth >= MAX_DEPTH:
            return marker("nesting-too-deep")
        result: dict[str, JsonValue] = {}
        for key, item in mapping.items():
            if self.is_secret_key(key) and item is not None and not isinstance(item, bool):
                masked: JsonValue = marker("secret-field")
            else:
                masked = self._redact_value(item, depth + 1)
            result[_unique_key(result, self.redact_text(key))] = masked
        return result

    def _redact_log_value(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float | str | list | tuple | Mapping):
            return self._redact_value(value, 0)  # type: ignore[arg-type]
        rendered = repr(value)
        masked = self.redact_text(rendered)
        return value if masked == rendered else masked


DEFAULT_REDACTOR = Redactor()
"""A redactor with only the built-in key names and patterns."""


def redact_event(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask secrets in a structlog event with the built-in detectors.

    Add it to the processor chain before the renderer. To include the policy file's
    extra keys and patterns, use `Redactor(...).redact_event` instead.
    """
    return DEFAULT_REDACTOR.redact_event(logger, method_name, event_dict)


def _normalize_extra_key(key: str) -> str:
    name = patterns.normalize_key_name(key)
    if not name:
        raise ValueError(f"invalid secret key name {key!r}: it must contain letters or digits")
    return name


def _compile_extra_pattern(name: str, regex: str) -> ValuePattern:
    if not _PATTERN_NAME.fullmatch(name):
        raise ValueError(
            f"invalid secret pattern name {name!r}: use 1 to 40 lower-case letters, digits and dashes"
        )
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"invalid regex for secret pattern {name!r}: {exc}") from None
    if compiled.search("") is not None:
        raise ValueError(
            f"secret pattern {name!r} matches the empty string; it must match at least one character"
        )
    return ValuePattern(name, compiled)


def _unique_key(existing: Mapping[str, object], key: str) -> str:
    # Two keys can mask to the same text; keep both values rather than drop one.
    candidate = key
    suffix = 2
    while candidate in existing:
        candidate = f"{key}#{suffix}"
        suffix += 1
    return candidate
