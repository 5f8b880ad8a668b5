"""Argument constraints hold wherever the argument name occurs, for every type of value."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from mcp_guard.config.rules import RuleConfig
from mcp_guard.policy import Decision, Deny, PolicyEngine
from mcp_guard.policy.constraints import MAX_DEPTH, MAX_NODES

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FIFTY_MB = 50 * 1024 * 1024

QUERY = {"query": {"full_match": "SELECT .*", "never_contains": "(?i)drop\\s+table"}}
EXACT = {"word": {"full_match": "abc"}}
MODE = {"mode": {"one_of": ["read", "append"]}}
ONE = {"value": {"one_of": [1]}}
LIMIT = {"limit": {"minimum": 1, "maximum": 100}}
SHORT = {"name": {"max_length": 5}}
IDS = {"ids": {"max_items": 2}}
URL = {"url": {"url_schemes": ["https"], "url_hosts": ["api.example.com", "bücher.example"]}}
ARGS = {"args": {"no_leading_dash": True}}
PATH = {"path": {"path_under": ["/srv/policy-test/data"]}}


def decide_with(
    constraints: dict[str, dict[str, Any]],
    arguments: dict[str, Any] | None,
    input_schema: dict[str, Any] | None = None,
) -> Decision:
    rule = RuleConfig.model_validate(
        {
            "name": "fenced",
            "clients": ["*"],
            "server": "tools",
            "tools": ["*"],
            "decision": "auto",
            "write": True,
            "arguments": constraints,
        }
    )
    policy = PolicyEngine([rule], {}, {})
    return policy.decide(
        "desktop",
        "tools",
        "run",
        annotations=None,
        arguments=arguments,
        now=NOW,
        first_use={},
        input_schema=input_schema,
    )


def reason_of(decision: Decision) -> str:
    """Return the reason without the sentence naming the rule, which every reason ends with."""
    assert isinstance(decision, Deny), decision
    assert decision.rule == "fenced"
    reason, rule = decision.reason.split(" The constraint is in rule ")
    assert rule == "'fenced'."
    return reason


# (constraints, arguments, allowed)
CASES = [
    # full_match and never_contains
    (QUERY, {"query": "SELECT * FROM t"}, True),
    (QUERY, {"query": "DELETE FROM t"}, False),
    (QUERY, {"query": "SELECT 1; DROP   TABLE t"}, False),
    (QUERY, {"query": "SELECT 1; drop\ttable t"}, False),
    (QUERY, {"query": "SELECT 1\nDELETE FROM t"}, False),
    (EXACT, {"word": "abc"}, True),
    (EXACT, {"word": "abc\n"}, False),
    (EXACT, {"word": "abcd"}, False),
    (EXACT, {"word": ["abc", "abc\n"]}, False),
    # one_of is typed and exact
    (MODE, {"mode": "read"}, True),
    (MODE, {"mode": "write"}, False),
    (MODE, {"mode": "Read"}, False),
    (MODE, {"mode": ["read", "append"]}, True),
    (MODE, {"mode": None}, False),
    (ONE, {"value": 1}, True),
    (ONE, {"value": 1.0}, False),
    (ONE, {"value": True}, False),
    (ONE, {"value": "1"}, False),
    # minimum and maximum accept finite numbers only
    (LIMIT, {"limit": 1}, True),
    (LIMIT, {"limit": 100}, True),
    (LIMIT, {"limit": 50.5}, True),
    (LIMIT, {"limit": 0}, False),
    (LIMIT, {"limit": 101}, False),
    (LIMIT, {"limit": 100.0001}, False),
    (LIMIT, {"limit": True}, False),
    (LIMIT, {"limit": "5"}, False),
    (LIMIT, {"limit": float("nan")}, False),
    (LIMIT, {"limit": float("inf")}, False),
    (LIMIT, {"limit": 10**30}, False),
    # max_length counts characters, and max_items counts array elements.
    (SHORT, {"name": "abcde"}, True),
    (SHORT, {"name": "ééééé"}, True),
    (SHORT, {"name": "abcdef"}, False),
    (SHORT, {"name": 12345}, False),
    (IDS, {"ids": [1, 2]}, True),
    (IDS, {"ids": [1, 2, 3]}, False),
    (IDS, {"ids": "12"}, False),
    (IDS, {"ids": {"0": 1}}, False),
    # URLs: exact host, no userinfo, no parser disagreements
    (URL, {"url": "https://api.example.com/v1/items?q=1"}, True),
    (URL, {"url": "HTTPS://API.EXAMPLE.COM:8443/"}, True),
    (URL, {"url": "https://xn--bcher-kva.example/"}, True),
    (URL, {"url": "http://api.example.com/"}, False),
    (URL, {"url": "https://api.example.com@evil.test/"}, False),
    (URL, {"url": "https://user:pass@api.example.com/"}, False),
    (URL, {"url": "https://api.example.com\\@evil.test/"}, False),
    (URL, {"url": "https://api.example.com\t@evil.test/"}, False),
    (URL, {"url": "https://api.example.com.evil.test/"}, False),
    (URL, {"url": "https://evil-api.example.com/"}, False),
    (URL, {"url": "https://evil.test/?next=https://api.example.com"}, False),
    (URL, {"url": "https://evil.test#@api.example.com"}, False),
    (URL, {"url": "https://api.example.com./"}, False),
    (URL, {"url": "https://bücher.example/"}, False),
    (URL, {"url": "//api.example.com/"}, False),
    (URL, {"url": "https://[::1/"}, False),
    (URL, {"url": 443}, False),
    # no_leading_dash: strings and each string element of arrays
    (ARGS, {"args": "file.txt"}, True),
    (ARGS, {"args": ["log", "--", "file.txt"]}, False),
    (ARGS, {"args": "--output=/tmp/x"}, False),
    (ARGS, {"args": ["status", "--output=/tmp/x"]}, False),
    (ARGS, {"args": " -rf"}, False),
    (ARGS, {"args": ["status", 5]}, False),
    # A value of the wrong type for the constraint is a violation.
    (PATH, {"path": 42}, False),
    (PATH, {"path": ["/srv/policy-test/data/a", 42]}, False),
    (PATH, {"path": {"value": "/srv/policy-test/data/a"}}, False),
    (PATH, {"path": None}, False),
    # Absent arguments are not checked unless required.
    (PATH, {}, True),
    (PATH, None, True),
]


@pytest.mark.parametrize(("constraints", "arguments", "allowed"), CASES)
@pytest.mark.attack("argument constraint evasion", params={"allowed": False})
@pytest.mark.legitimate("argument constraint evasion", params={"allowed": True})
def test_constraint_table(
    constraints: dict[str, dict[str, Any]], arguments: dict[str, Any], allowed: bool
) -> None:
    decision = decide_with(constraints, arguments)

    assert (decision.kind == "auto") is allowed, decision


@pytest.mark.attack("argument constraint evasion")
def test_smuggled_in_nested_object() -> None:
    arguments = {"config": {"target": {"path": "/etc/passwd"}}, "path": "/srv/policy-test/data/a"}

    reason = reason_of(decide_with(PATH, arguments))

    assert reason.startswith('arguments.config.target.path ("/etc/passwd") is outside the allowed folders')
    assert 'outside the allowed folders ("/srv/policy-test/data")' in reason


@pytest.mark.attack("argument constraint evasion")
def test_smuggled_inside_array() -> None:
    arguments = {"edits": [{"path": "/srv/policy-test/data/a"}, {"path": "/root/.ssh/id_rsa"}]}

    reason = reason_of(decide_with(PATH, arguments))

    assert reason.startswith('arguments.edits[1].path ("/root/.ssh/id_rsa")')


@pytest.mark.attack("argument constraint evasion")
def test_smuggled_under_alias_name() -> None:
    constraints = {"filePath": {"path_under": ["/srv/policy-test/data"]}}

    reason = reason_of(decide_with(constraints, {"options": {"file_path": "/etc/shadow"}}))

    assert reason.startswith('arguments.options.file_path ("/etc/shadow")')


def test_odd_key_rendered_quoted() -> None:
    reason = reason_of(decide_with(PATH, {"my options": {"path": 7}}))

    assert reason == (
        'arguments["my options"].path (7) is a number, but the path_under constraint applies only to strings.'
    )


def test_regex_reason_shows_newline() -> None:
    reason = reason_of(decide_with(EXACT, {"word": "abc\n"}))

    assert reason == 'arguments.word ("abc\\n") does not match the required pattern "abc".'


def test_never_contains_reason_shows_match() -> None:
    reason = reason_of(decide_with(QUERY, {"query": "SELECT 1; DROP  TABLE t"}))

    assert reason == (
        'arguments.query ("SELECT 1; DROP  TABLE t") contains "DROP  TABLE", '
        "which the pattern '(?i)drop\\s+table' forbids."
    )


def test_one_of_reason_lists_allowed() -> None:
    reason = reason_of(decide_with(ONE, {"value": True}))

    assert reason == "arguments.value (true) is not one of the allowed values (1)."


def test_leading_dash_reason_names_element() -> None:
    reason = reason_of(decide_with(ARGS, {"args": ["status", "--output=/tmp/x"]}))

    assert reason == (
        "arguments.args[1] (\"--output=/tmp/x\") starts with '-', so a command-line tool could read it as an option."
    )


def test_userinfo_reason() -> None:
    reason = reason_of(decide_with(URL, {"url": "https://api.example.com@evil.test/"}))

    assert "contains user information before '@'" in reason


def test_required_argument_missing() -> None:
    constraints = {"path": {"required": True, "path_under": ["/srv/policy-test/data"]}}

    reason = reason_of(decide_with(constraints, {"other": 1}))

    assert reason == "arguments.path is missing, and the policy requires it."


@pytest.mark.attack("argument constraint evasion")
def test_required_needs_exact_name() -> None:
    constraints = {"repoPath": {"required": True, "path_under": ["/srv/policy-test/data"]}}
    schema = {"type": "object", "properties": {"repo_path": {"type": "string"}}}

    respelled = decide_with(constraints, {"REPOPATH": "/srv/policy-test/data/repo"}, schema)
    schema_name = decide_with(constraints, {"repo_path": "/srv/policy-test/data/repo"}, schema)
    policy_name = decide_with(constraints, {"repoPath": "/srv/policy-test/data/repo"})

    assert respelled.kind == "deny"  # the server reads repo_path, which is missing
    assert schema_name.kind == "auto"
    assert policy_name.kind == "auto"


@pytest.mark.attack("argument constraint evasion")
def test_schema_default_checked_when_missing() -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string", "default": "/etc"}}}

    reason = reason_of(decide_with(PATH, {}, schema))

    assert reason.startswith(
        'arguments.path (missing, so the schema default) ("/etc") is outside the allowed'
    )


@pytest.mark.legitimate("argument constraint evasion")
def test_schema_default_inside_allowed() -> None:
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string", "default": "/srv/policy-test/data"}},
    }

    assert decide_with(PATH, {}, schema).kind == "auto"


@pytest.mark.attack("argument constraint evasion")
def test_schema_never_loosens() -> None:
    # A schema that declares no such property does not stop the walk from finding it.
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False}

    assert decide_with(PATH, {"path": "/etc"}, schema).kind == "deny"


@pytest.mark.parametrize(
    "constraints",
    [PATH, QUERY, EXACT, SHORT, {"name": {"never_contains": "x"}}],
    ids=["path_under", "full_match", "full_match_exact", "max_length", "never_contains"],
)
@pytest.mark.attack("oversized or pathological input")
def test_fifty_megabyte_string_denied_fast(constraints: dict[str, dict[str, Any]]) -> None:
    name = next(iter(constraints))
    huge = "a" * FIFTY_MB
    started = time.perf_counter()

    reason = reason_of(decide_with(constraints, {name: huge}))

    assert time.perf_counter() - started < 2.0
    assert len(reason) < 400
    assert "52,428,800 characters" in reason


@pytest.mark.attack("oversized or pathological input")
def test_deep_nesting_denied_without_recursion() -> None:
    nested: dict[str, Any] = {"path": "/etc/passwd"}
    for _ in range(10_000):
        nested = {"a": nested}

    reason = reason_of(decide_with(PATH, {"root": nested}))

    assert f"nested more than {MAX_DEPTH} levels deep" in reason


@pytest.mark.attack("oversized or pathological input")
def test_deep_array_nesting_denied() -> None:
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]

    reason = reason_of(decide_with(PATH, {"root": nested}))

    assert f"nested more than {MAX_DEPTH} levels deep" in reason


@pytest.mark.attack("oversized or pathological input")
def test_nesting_limit_is_exact() -> None:
    # arguments -> root -> (wraps) -> {"path": ...} -> the string: MAX_DEPTH levels with MAX_DEPTH - 2 wraps.
    at_limit: dict[str, Any] = {"path": "/srv/policy-test/data/x"}
    for _ in range(MAX_DEPTH - 2):
        at_limit = {"a": at_limit}
    over_limit = {"a": at_limit}

    assert decide_with(PATH, {"root": at_limit}).kind == "auto"
    assert decide_with(PATH, {"root": over_limit}).kind == "deny"


@pytest.mark.attack("oversized or pathological input")
def test_too_many_values_denied() -> None:
    arguments = {"rows": [{"id": index} for index in range(MAX_NODES)]}

    reason = reason_of(decide_with(PATH, arguments))

    assert reason == f"The arguments contain more than {MAX_NODES:,} values; the policy rejects larger ones."


@pytest.mark.attack("oversized or pathological input")
def test_long_array_under_constrained_name() -> None:
    reason = reason_of(decide_with(ARGS, {"args": ["x"] * (MAX_NODES + 1)}))

    assert f"more than the {MAX_NODES:,} items the gateway checks" in reason


@pytest.mark.legitimate("oversized or pathological input")
def test_unconstrained_rule_does_not_walk() -> None:
    nested: dict[str, Any] = {}
    for _ in range(10_000):
        nested = {"a": nested}
    rule = RuleConfig(name="open", clients=["*"], server="tools", tools=["*"], decision="auto", write=True)
    policy = PolicyEngine([rule], {}, {})

    decision = policy.decide(
        "desktop", "tools", "run", annotations=None, arguments={"root": nested}, now=NOW, first_use={}
    )

    assert decision.kind == "auto"


@pytest.mark.attack("oversized or pathological input")
def test_fifty_megabyte_key_checked_fast() -> None:
    started = time.perf_counter()

    padded = decide_with(PATH, {"_" * FIFTY_MB + "path": "/etc/passwd"})
    unrelated = decide_with(PATH, {"é" * FIFTY_MB: "/etc/passwd"})

    assert time.perf_counter() - started < 4.0
    assert "is outside the allowed folders" in reason_of(padded)
    assert unrelated.kind == "auto"


@pytest.mark.attack("argument constraint evasion", attempts=2)
def test_max_items_nested_arrays() -> None:
    constraints = {"args": {"max_items": 2, "no_leading_dash": True}}

    nested = decide_with(constraints, {"args": [["a", "b", "c"]]})
    dashed = decide_with(constraints, {"args": [["ok", "--output=/tmp/x"]]})
    fine = decide_with(constraints, {"args": [["a", "b"], "c"]})

    assert nested.kind == "deny"
    assert dashed.kind == "deny"
    assert fine.kind == "auto"
