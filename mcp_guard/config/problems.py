"""Turning pydantic validation errors into problem lines a person can act on.

Each line reads "key.path: what is wrong (got value); fix". The errors pydantic
reports for each branch of a union (a number is an integer or a float) become
one line. Values are written as the policy file would write them, and values
that may contain a secret are never shown. Reading the file is left to `loading.py`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import date, datetime, time
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from mcp_guard.config.models import GatewayConfig, HttpServerConfig, StdioServerConfig
from mcp_guard.config.toml_text import toml_value

# Values longer than this are shortened in error messages.
MAX_SHOWN_VALUE = 80
# `user:password@` in a URL is masked before a value is shown in an error.
USERINFO = re.compile(r"://[^/@\s]*@")
# Keys whose values may be a secret pasted by mistake, so no error shows them.
SECRET_KEYS = frozenset({"api_key_hashes", "env", "env_from", "headers", "headers_from"})
# The expected kind of value, by the type of a pydantic error that only reports a wrong type.
EXPECTED_BY_ERROR_TYPE = {
    "string_type": "a string",
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
# The tags pydantic puts in an error's location after a server id, naming the kind of server.
SERVER_KINDS: dict[str, type[BaseModel]] = {"stdio": StdioServerConfig, "http": HttpServerConfig}

Location = tuple[int | str, ...]


def describe_errors(errors: Sequence[ErrorDetails]) -> list[str]:
    """Return one problem line per location, in the order pydantic reported them."""
    by_location: dict[Location, list[ErrorDetails]] = {}
    for error in errors:
        keys, _ = _walk(error["loc"])
        by_location.setdefault(keys, []).append(error)
    lines: list[str] = []
    for keys, group in by_location.items():
        for line in _describe(keys, group):
            if line not in lines:
                lines.append(line)
    return lines


def _describe(keys: Location, errors: list[ErrorDetails]) -> list[str]:
    location = _key_path(keys)
    secret = any(key in SECRET_KEYS for key in keys)
    wrong_types = [EXPECTED_BY_ERROR_TYPE[e["type"]] for e in errors if e["type"] in EXPECTED_BY_ERROR_TYPE]
    others = [e for e in errors if e["type"] not in EXPECTED_BY_ERROR_TYPE]
    if not others:
        # Every branch of a union (or the one type) rejected the value's type.
        got = _described(errors[0]["input"], secret)
        return [f"{location}: must be {_expected(wrong_types)}, got {got}"]
    # A branch that accepted the type but not the value is more precise than those that rejected the type.
    return [_describe_one(error, keys, location, secret) for error in others]


def _describe_one(error: ErrorDetails, keys: Location, location: str, secret: bool) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(keys, location)
    if kind == "missing":
        return f"{location}: required key is missing; add it"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch" and "pattern" in (error.get("ctx") or {}):
        message = _pattern_hint(location, error["ctx"]["pattern"])
    # A validator that checks a whole array or table names the entry itself.
    # A key's own problem shows the key in the path already.
    hidden = (
        secret or keys[-1:] == ("[key]",) or (kind == "value_error" and isinstance(error.get("input"), list))
    )
    shown = "" if hidden else _shown(error.get("input"))
    if not shown or _quotes(message, error.get("input"), shown):
        return f"{location}: {message}"  # each value is shown once
    return f"{location}: {message} (got {shown})"


def _quotes(message: str, value: Any, shown: str) -> bool:
    """Return whether a validator's `message` already shows the datetime or date `value`."""
    # Only these: a number or a short string in a message ("greater than 0") is seldom the value.
    return isinstance(value, date | time) and shown in message


def _walk(loc: Sequence[int | str]) -> tuple[Location, Any]:
    """Return the key path of `loc` without union tags, and the type at its end (None if unknown).

    Pydantic adds a tag to the location for each branch of a union it tried (`minimum.int`,
    `minimum.float`). The tags are distinguished from keys by following the models' types, so an
    argument a rule names `int` stays in the path.
    """
    keys: list[int | str] = []
    current: Any = GatewayConfig
    for item in loc:
        model = _model_in(current)
        element = _element_type(current)
        if item == "[key]":
            keys.append(item)
            current = None
        elif model is not None and isinstance(item, str) and item in model.model_fields:
            keys.append(item)
            current = model.model_fields[item].annotation
        elif isinstance(item, str) and _is_union(current):
            current = SERVER_KINDS.get(item, current)
        elif element is not None:
            keys.append(item)  # a list index or a table's key
            current = element
        else:
            keys.append(item)
            current = None
    return tuple(keys), current


def _expected(types: list[str]) -> str:
    names = list(dict.fromkeys(types))
    if "an integer" in names and "a number" in names:
        names.remove("an integer")  # a float branch accepts integers too
    if names == ["a boolean"]:
        return "true or false"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _described(value: Any, secret: bool) -> str:
    kind = _kind_of(value)
    if secret or isinstance(value, dict):
        article = "an" if kind[0] in "aeiou" else "a"
        return f"{article} {kind}"
    return f"the {kind} {_shown(value)}"


def _kind_of(value: Any) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (str, "string"),
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (datetime, "datetime"),
        (date, "date"),
        (time, "time"),
        (list, "array"),
        (dict, "table"),
    ]
    for python_type, name in kinds:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _key_path(keys: Location) -> str:
    parts: list[str] = []
    for item in keys:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]" and parts:
            # The key itself is invalid: quote it as TOML would, so spaces and dots stay visible.
            last = parts.pop()
            separator = "." if last.startswith(".") else ""
            parts.append(f'{separator}"{last.lstrip(".")}"')
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _unknown_key(keys: Location, location: str) -> str:
    key = str(keys[-1])
    _, parent = _walk(keys[:-1])
    model = _model_in(parent)
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(sorted(known))}"
    return f"{location}: unknown key; {hint}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """Return the model `annotation` names, looking through Annotated and unions but not containers."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Annotated, Union, UnionType):
        for argument in get_args(annotation):
            model = _model_in(argument)
            if model is not None:
                return model
    return None


def _element_type(annotation: Any) -> Any:
    """Return the type of the entries of a list or the values of a dict that `annotation` names."""
    origin = get_origin(annotation)
    if origin in (Annotated, Union, UnionType):
        for argument in get_args(annotation):
            element = _element_type(argument)
            if element is not None:
                return element
        return None
    if origin is list:
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    return None


def _is_union(annotation: Any) -> bool:
    """Return whether `annotation` is a union of two or more types besides None."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_union(get_args(annotation)[0])
    if origin in (Union, UnionType):
        members = [argument for argument in get_args(annotation) if argument is not type(None)]
        return len(members) > 1 or any(_is_union(member) for member in members)
    return False


def _pattern_hint(location: str, pattern: str) -> str:
    if location.endswith("url"):
        return "expected an http:// or https:// URL without spaces"
    if location.startswith("servers") and not location.endswith("path"):
        return "expected a letter followed by up to 31 letters, digits, '_' or '-'"
    return f"does not match the pattern {pattern}"


def _shown(value: Any) -> str:
    if value is None or isinstance(value, dict):
        return ""
    text = USERINFO.sub("://***@", toml_value(value))
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE] + "..."
