"""Problems in a policy file name the key path, the value as written in TOML, and the fix."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from support import without_rule_names

from mcp_guard.config import load_config
from mcp_guard.config.toml_text import toml_value
from mcp_guard.errors import ConfigError

HEAD = '[servers.files]\ncommand = "x"\n[clients.agent]\n'
RULE = '[[rules]]\nname = "r"\nclients = ["agent"]\nserver = "files"\ntools = ["*"]\ndecision = "auto"\n'


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_config(write_policy(tmp_path, text), environ={})
    return without_rule_names(error.value.problems)


def rule_problems(tmp_path: Path, lines: str) -> list[str]:
    return problems_of(tmp_path, HEAD + RULE + lines)


def loads(tmp_path: Path, text: str) -> None:
    load_config(write_policy(tmp_path, text), environ={})


@pytest.mark.parametrize("key", ["full_match", "never_contains"])
def test_backspace_in_pattern_rejected(tmp_path: Path, key: str) -> None:
    found = rule_problems(tmp_path, f'arguments.query.{key} = "(?i)\\bSELECT\\b.*"\n')

    assert len(found) == 1
    assert found[0].startswith(
        f"rules[0].arguments.query.{key}: the pattern contains the control character U+0008"
    )
    assert "write the pattern in single quotes ('...') so backslashes stay as written" in found[0]
    assert found[0].endswith('(got "(?i)\\bSELECT\\b.*")')


def test_multiline_verbose_pattern_loads(tmp_path: Path) -> None:
    loads(tmp_path, HEAD + RULE + "arguments.query.full_match = '''(?x)\n\tSELECT \\b .*\r\n'''\n")


def test_redact_pattern_backspace_rejected(tmp_path: Path) -> None:
    found = problems_of(tmp_path, HEAD + '[audit]\nredact_patterns = { id = "\\bCUST" }\n')

    assert len(found) == 1
    assert found[0].startswith("audit: redact_patterns.id: the pattern contains the control character U+0008")


def test_unescaped_backslash_hint(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.query.full_match = "(?i)\\sSELECT"\n')

    assert found[0].startswith("invalid TOML: Unescaped '\\' in a string")
    assert found[0].endswith("write the value in single quotes ('...') so backslashes stay as written")


def test_other_toml_error_has_no_hint(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "[servers.a\n")

    assert "single quotes" not in found[0]


def test_regex_value_shown_once(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.query.full_match = "SELECT ("\n')

    assert found == [
        "rules[0].arguments.query.full_match: invalid regular expression: missing ), unterminated "
        'subpattern at position 7; fix it (Python `re` syntax) (got "SELECT (")'
    ]


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("https://docs.example.com/", "docs.example.com"),
        ("docs.example.com/guide", "docs.example.com"),
        ("me@docs.example.com", "docs.example.com"),
    ],
)
def test_url_host_with_extra_parts_rejected(tmp_path: Path, host: str, name: str) -> None:
    found = rule_problems(tmp_path, f'arguments.url.url_hosts = ["pypi.org", "{host}"]\n')

    assert found == [f'rules[0].arguments.url.url_hosts[1]: write the host name only: {name} (got "{host}")']


def test_url_scheme_with_separator_rejected(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.url.url_schemes = ["https://"]\n')

    assert found == [
        "rules[0].arguments.url.url_schemes[0]: write the scheme without '://': https (got \"https://\")"
    ]


def test_url_scheme_upper_case_accepted(tmp_path: Path) -> None:
    path = write_policy(tmp_path, HEAD + RULE + 'arguments.url.url_schemes = ["HTTPS"]\n')

    config = load_config(path, environ={})

    assert config.rules[0].arguments["url"].url_schemes == ["https"]


def test_number_union_one_problem(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.limit.minimum = "1"\n')

    assert found == ['rules[0].arguments.limit.minimum: must be a number, got the string "1"']


def test_one_of_nested_array_one_problem(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.mode.one_of = ["a", ["b"]]\n')

    assert found == [
        'rules[0].arguments.mode.one_of[1]: must be a string, a boolean or a number, got the array ["b"]'
    ]


def test_datetime_value_written_as_toml(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, "arguments.mode.one_of = [2026-12-01T09:00:00]\n")

    assert found == [
        "rules[0].arguments.mode.one_of[0]: must be a string, a boolean or a number, "
        "got the datetime 2026-12-01T09:00:00"
    ]


def test_timezone_problem_shows_value_once(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, "not_before = 2026-12-01T09:00:00\n")

    assert len(found) == 1
    assert found[0].count("2026-12-01T09:00:00 ") == 1
    assert "(got" not in found[0]


def test_argument_named_like_union_branch_kept(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.int.minimum = "x"\narguments.http.max_length = -1\n')

    assert found[0] == 'rules[0].arguments.int.minimum: must be a number, got the string "x"'
    assert found[1].startswith("rules[0].arguments.http.max_length:")


def test_path_base_alone_names_path_under(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.path.path_base = "/srv"\n')

    assert found == [
        "rules[0].arguments.path: path_base only applies together with path_under; add path_under"
    ]


@pytest.mark.parametrize(
    "line",
    [
        'write = "yes"',
        "write = 1",
        'write = "true"',
        'arguments.repo.required = "yes"',
        "arguments.args.no_leading_dash = 1",
        'arguments.text.max_length = "500"',
        'arguments.args.max_items = "5"',
        "arguments.text.max_length = 5.0",
        'active_for_seconds = "60"',
    ],
)
def test_rule_types_strict(tmp_path: Path, line: str) -> None:
    found = rule_problems(tmp_path, line + "\n")

    assert len(found) == 1
    assert ": must be " in found[0]
    assert ", got the " in found[0]


def test_write_string_message(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'write = "yes"\n')

    assert found == ['rules[0].write: must be true or false, got the string "yes"']


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("[servers.files]", 'trust_annotations = "true"'),
        ("[servers.files]", "allow_new_tools = 1"),
        ("[servers.files]", 'relay_questions = "yes"'),
        ("[audit]", 'enabled = "false"'),
        ("[audit]", "power_safe = 1"),
        ("[approval]", 'offer_session = "yes"'),
        ("[sandbox]", 'session_sandboxes = "true"'),
    ],
)
def test_switches_strict(tmp_path: Path, section: str, line: str) -> None:
    text = '[clients.agent]\n[servers.files]\ncommand = "x"\n'
    if section != "[servers.files]":
        text += section + "\n"
    text += line + "\n"

    found = problems_of(tmp_path, text)

    assert len(found) == 1
    assert "must be true or false, got the " in found[0]


def test_floats_accept_integers(tmp_path: Path) -> None:
    text = (
        HEAD + RULE + "active_for_seconds = 60\narguments.n.minimum = 1\n[approval]\ntimeout_seconds = 30\n"
    )

    loads(tmp_path, text)


@pytest.mark.parametrize("key", ["path_under", "path_base"])
def test_tilde_folder_rejected(tmp_path: Path, key: str) -> None:
    value = '["~/shared"]' if key == "path_under" else '"~/shared"'
    lines = f"arguments.path.{key} = {value}\n"
    if key == "path_base":
        lines += 'arguments.path.path_under = ["/srv"]\n'

    found = rule_problems(tmp_path, lines)

    index = "[0]" if key == "path_under" else ""
    assert found == [
        f'rules[0].arguments.path.{key}{index}: write the absolute path; ~ is not expanded (got "~/shared")'
    ]


def test_empty_folder_rejected(tmp_path: Path) -> None:
    found = rule_problems(tmp_path, 'arguments.path.path_under = ["/srv", ""]\n')

    assert found == [
        "rules[0].arguments.path.path_under[1]: empty folder; give an absolute path or one relative "
        'to the policy file (got "")'
    ]


def test_relative_folder_still_resolved(tmp_path: Path) -> None:
    path = write_policy(tmp_path, HEAD + RULE + 'arguments.path.path_under = ["shared"]\n')

    config = load_config(path, environ={})

    assert config.rules[0].arguments["path"].path_under == [str(tmp_path / "shared")]


def test_key_hash_entry_value_hidden(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "[clients.agent]\napi_key_hashes = [12345678]\n")

    assert found == ["clients.agent.api_key_hashes[0]: must be a string, got an integer"]


def test_bad_file_rejected_whole(tmp_path: Path) -> None:
    text = HEAD + RULE + 'write = "yes"\narguments.url.url_hosts = ["https://a.org/"]\n'

    found = problems_of(tmp_path, text)

    assert len(found) == 2


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("1", '"1"'),
        ("(?i)SELECT\\b", "'(?i)SELECT\\b'"),
        ("it's\\b", '"it\'s\\\\b"'),
        ("a\bb", '"a\\bb"'),
        ("\x01", '"\\u0001"'),
        (True, "true"),
        (1, "1"),
        (1.5, "1.5"),
        (float("inf"), "inf"),
        (datetime(2026, 12, 1, 9, 0), "2026-12-01T09:00:00"),
        (datetime(2026, 12, 1, 9, 0, tzinfo=UTC), "2026-12-01T09:00:00+00:00"),
        (date(2026, 12, 1), "2026-12-01"),
        (["a", 1], '["a", 1]'),
        ({"a b": 1}, '{ "a b" = 1 }'),
    ],
)
def test_toml_value_written(value: object, written: str) -> None:
    assert toml_value(value) == written


def test_problem_names_its_rule(tmp_path: Path) -> None:
    text = HEAD + RULE + 'arguments.path.path_under = ["~/scratch"]\n'
    text += '[[limits.rules]]\nname = "burst"\nclients = ["*"]\nrequests_per_minute = "many"\n'
    with pytest.raises(ConfigError) as error:
        load_config(write_policy(tmp_path, text), environ={})

    problems = error.value.problems
    assert problems[0].startswith("rules[0].arguments.path.path_under[0] (rule 'r'): write the absolute path")
    assert problems[1].startswith("limits.rules[0].requests_per_minute (limit 'burst'): must be")
