"""The `[clients.*]` and `[[rules]]` sections are validated with errors that name the key and the fix."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from mcp_guard.config.rules import (
    ClientConfig,
    ClientId,
    RuleConfig,
    RuleList,
    argument_key,
    check_references,
)

BRIEF_EXAMPLE = r"""
[clients.desktop]
organisation = "acme"
groups = ["developers"]
api_key_hashes = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
api_key_hashes_from = "DESKTOP_KEYS"

[[rules]]
name = "git can be read"
clients = ["desktop"]
server = "git"
tools = ["*"]
decision = "auto"
write = false
not_before = 2026-12-01T09:00:00Z
not_after = 2026-12-31T18:00:00Z
active_for_seconds = 300

[rules.arguments.path]
path_under = ["/data/allowed", "/srv/shared"]
max_length = 4096
[rules.arguments.query]
full_match = "SELECT .*"
never_contains = "(?i)drop\\s+table"
[rules.arguments.mode]
one_of = ["read", "append"]
[rules.arguments.limit]
minimum = 1
maximum = 100
[rules.arguments.ids]
max_items = 50
[rules.arguments.url]
url_schemes = ["HTTPS"]
url_hosts = ["API.example.com", "bücher.example"]
[rules.arguments.args]
no_leading_dash = true
"""


class PolicySections(BaseModel):
    """The two sections as the gateway's config model will hold them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clients: dict[ClientId, ClientConfig] = {}
    rules: RuleList = []


def parse(text: str) -> PolicySections:
    return PolicySections.model_validate(tomllib.loads(text))


def problems(text: str) -> list[str]:
    """Return each validation error as "key.path: message"."""
    with pytest.raises(ValidationError) as error:
        parse(text)
    lines = []
    for item in error.value.errors():
        path = ".".join(str(part) for part in item["loc"])
        lines.append(f"{path}: {item['msg'].removeprefix('Value error, ')}")
    return lines


def rule_text(extra: str = "", name: str = "r") -> str:
    return f'[[rules]]\nname = "{name}"\nclients = ["*"]\nserver = "git"\ntools = ["*"]\ndecision = "auto"\n{extra}'


def test_full_example_parses() -> None:
    sections = parse(BRIEF_EXAMPLE)

    rule = sections.rules[0]
    assert sections.clients["desktop"].groups == ["developers"]
    assert rule.not_before == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert rule.active_for_seconds == 300
    assert rule.arguments["url"].url_schemes == ["https"]
    assert rule.arguments["url"].url_hosts == ["api.example.com", "xn--bcher-kva.example"]
    assert rule.arguments["mode"].one_of == ["read", "append"]


def test_one_of_keeps_types() -> None:
    sections = parse(rule_text('[rules.arguments.mode]\none_of = ["1", 1, 1.0, true]\n'))

    options = sections.rules[0].arguments["mode"].one_of
    assert options is not None
    assert [type(option) for option in options] == [str, int, float, bool]


def test_bad_regex_named() -> None:
    found = problems(rule_text('[rules.arguments.query]\nfull_match = "SELECT ("\n'))

    assert len(found) == 1
    assert found[0].startswith("rules.0.arguments.query.full_match: invalid regular expression: ")
    assert "missing )" in found[0]


def test_bad_never_contains_regex_named() -> None:
    found = problems(rule_text('[rules.arguments.query]\nnever_contains = "[a-"\n'))

    assert found[0].startswith("rules.0.arguments.query.never_contains: invalid regular expression: ")
    assert "unterminated character set" in found[0]


def test_duplicate_rule_name() -> None:
    found = problems(rule_text(name="same") + rule_text(name="other") + rule_text(name="same"))

    assert found == [
        "rules: rules[0] and rules[2] are both named 'same'; give each rule a unique name",
    ]


def test_not_after_before_not_before() -> None:
    found = problems(rule_text("not_before = 2026-12-31T00:00:00Z\nnot_after = 2026-12-01T00:00:00Z\n"))

    assert len(found) == 1
    assert found[0].startswith("rules.0: not_after (2026-12-01T00:00:00+00:00) is not later than not_before")


def test_datetime_without_timezone() -> None:
    found = problems(rule_text("not_before = 2026-12-01T09:00:00\n"))

    assert found == [
        "rules.0.not_before: 2026-12-01T09:00:00 has no timezone; add one, for example 2026-12-01T09:00:00Z for UTC"
    ]


def test_bare_date_rejected() -> None:
    found = problems(rule_text("not_after = 2026-12-01\n"))

    assert found == [
        "rules.0.not_after: 2026-12-01 is a date without a time; write 2026-12-01T00:00:00Z or another time"
    ]


def test_empty_tools_rejected() -> None:
    found = problems(
        '[[rules]]\nname = "r"\nclients = ["*"]\nserver = "git"\ntools = []\ndecision = "auto"\n'
    )

    assert len(found) == 1
    assert found == [
        'rules.0.tools: the rule names no tool; list tool names, or "*" for every tool of the server'
    ]


def test_rule_without_clients_rejected() -> None:
    found = problems('[[rules]]\nname = "r"\nserver = "git"\ntools = ["*"]\ndecision = "auto"\n')

    assert found == [
        'rules.0: the rule names no client; set clients = ["*"] for everyone, or list clients or groups'
    ]


def test_unknown_decision_rejected() -> None:
    found = problems(rule_text().replace('decision = "auto"', 'decision = "allow"'))

    assert len(found) == 1
    assert found[0].startswith("rules.0.decision:")


def test_unknown_constraint_key_rejected() -> None:
    found = problems(rule_text("[rules.arguments.path]\npath_undr = ['/data']\n"))

    assert found[0].startswith("rules.0.arguments.path.path_undr:")


def test_constraint_table_without_constraint() -> None:
    found = problems(rule_text("[rules.arguments.path]\nrequired = false\n"))

    assert found[0].startswith("rules.0.arguments.path: the table sets no constraint")


def test_relative_path_root_rejected() -> None:
    found = problems(rule_text('[rules.arguments.path]\npath_under = ["data"]\n'))

    assert found == [
        "rules.0.arguments.path.path_under.0: is not an absolute path; write it starting with '/'"
    ]


def test_path_base_needs_path_under() -> None:
    found = problems(rule_text('[rules.arguments.path]\npath_base = "/data"\nmax_length = 9\n'))

    assert found == [
        "rules.0.arguments.path: path_base only applies together with path_under; add path_under"
    ]


def test_minimum_above_maximum() -> None:
    found = problems(rule_text("[rules.arguments.limit]\nminimum = 10\nmaximum = 1\n"))

    assert found == ["rules.0.arguments.limit: minimum (10) is greater than maximum (1); swap them"]


def test_non_finite_bounds_rejected() -> None:
    found = problems(
        rule_text("[rules.arguments.limit]\nmaximum = inf\n[rules.arguments.mode]\none_of = [nan]\n")
    )

    assert "rules.0.arguments.limit.maximum: the bound must be a finite number" in found
    assert "rules.0.arguments.mode.one_of: nan never equals any value; remove it" in found


def test_aliased_argument_names_collide() -> None:
    found = problems(
        rule_text("[rules.arguments.filePath]\nmax_length = 9\n[rules.arguments.file_path]\nmax_length = 9\n")
    )

    assert len(found) == 1
    assert "'filePath' and 'file_path' name the same argument" in found[0]


def test_deny_rule_with_arguments_rejected() -> None:
    text = rule_text("[rules.arguments.path]\nmax_length = 9\n").replace('"auto"', '"deny"')

    found = problems(text)

    assert found[0].startswith("rules.0: a deny rule rejects every call it matches")


def test_deny_rule_with_active_window_rejected() -> None:
    found = problems(rule_text("active_for_seconds = 60\n").replace('"auto"', '"deny"'))

    assert found[0].startswith("rules.0: a deny rule is never started by a call")


def test_malformed_key_hash_not_echoed() -> None:
    pasted_key = "sk-live-0123456789abcdef"

    found = problems(f'[clients.desktop]\napi_key_hashes = ["{pasted_key}"]\n')

    assert len(found) == 1
    assert found[0].startswith("clients.desktop.api_key_hashes: entry [0] is not written as 'sha256:")
    assert pasted_key not in found[0]


def test_key_hashes_hidden_from_repr() -> None:
    digest = "sha256:" + "ab" * 32

    client = ClientConfig(api_key_hashes=[digest])

    assert digest not in repr(client)


def test_bad_client_id_in_rule() -> None:
    found = problems(rule_text().replace('clients = ["*"]', 'clients = ["desk top"]'))

    assert len(found) == 1
    assert found[0].startswith("rules.0.clients: entry [0] 'desk top' is neither \"*\" nor a client id")


def test_unknown_references_reported() -> None:
    sections = parse(
        '[clients.desktop]\ngroups = ["developers"]\n'
        '[[rules]]\nname = "r"\nclients = ["deskop", "*"]\ngroups = ["developer"]\nserver = "gti"\n'
        'tools = ["*"]\ndecision = "auto"\n'
    )

    found = check_references(sections.rules, sections.clients, ["git", "files"])

    assert found == [
        "rules[0].clients[0]: rule 'r' names client 'deskop', which is not defined; "
        "add [clients.deskop] or fix the name (did you mean 'desktop'?)",
        "rules[0].groups[0]: rule 'r' names group 'developer', but no client is in it; "
        "add it to a client's groups or fix the name (did you mean 'developers'?)",
        "rules[0].server: rule 'r' names server 'gti', which is not configured; "
        "add [servers.gti], use \"*\" or fix the name (did you mean 'git'?)",
    ]


def test_known_references_pass() -> None:
    sections = parse('[clients.desktop]\ngroups = ["dev"]\n' + rule_text().replace('"git"', '"*"'))

    assert check_references(sections.rules, sections.clients, ["git"]) == []


def test_argument_key_folds_aliases() -> None:
    assert argument_key("filePath") == argument_key("file_path") == argument_key("FILE-PATH")
    assert argument_key("ｐａｔｈ") == "path"
    assert argument_key("path") != argument_key("paths")


def test_rule_model_is_frozen() -> None:
    rule = RuleConfig(name="r", clients=["*"], server="git", tools=["*"], decision="auto")

    with pytest.raises(ValidationError):
        rule.name = "other"
