"""The `[limits]` section: each mistake is named with its key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import without_rule_names

from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError

SERVER = '[servers.files]\ncommand = "x"\n[clients.alice]\ngroups = ["team"]\n'


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "policy.toml"
    path.write_text(SERVER + text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=environ or {})
    return without_rule_names(error.value.problems)


def test_valid_limits_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        SERVER
        + '[limits]\nstore = "redis"\n'
        + '[[limits.rules]]\nname = "each client"\nrequests_per_minute = 30\n'
        + '[[limits.rules]]\nname = "team"\ngroups = ["team"]\nserver = "files"\nper = "organisation"\n'
        + "cost_per_hour = 2.5\n"
        + '[[limits.costs]]\nserver = "files"\ntools = ["read"]\nper_call = 0.1\n'
    )

    limits = load_config(path, environ={}).limits

    assert limits.store == "redis"
    assert limits.on_store_failure == "deny"
    assert [rule.name for rule in limits.rules] == ["each client", "team"]
    assert limits.rules[0].dimensions() == {"requests_per_minute": 30}


def test_limit_without_dimension_rejected(tmp_path: Path) -> None:
    problems = problems_of('[[limits.rules]]\nname = "empty"\nclients = ["alice"]\n', tmp_path)

    assert len(problems) == 1
    assert (
        problems[0].startswith("limits.rules[0]: limit 'empty'")
        and "sets no limit; add at least one of" in problems[0]
    )


def test_unknown_references_named(tmp_path: Path) -> None:
    text = (
        '[[limits.rules]]\nname = "typos"\nclients = ["alcie"]\ngroups = ["taem"]\nserver = "flies"\n'
        "requests_per_minute = 5\n"
        '[[limits.costs]]\nserver = "nope"\nper_call = 1\n'
    )

    problems = problems_of(text, tmp_path)

    assert any("limits.rules[0].clients[0]" in p and "did you mean 'alice'" in p for p in problems)
    assert any("limits.rules[0].groups[0]" in p and "did you mean 'team'" in p for p in problems)
    assert any("limits.rules[0].server" in p and "did you mean 'files'" in p for p in problems)
    assert any(p.startswith("limits.costs[0].server: server 'nope'") for p in problems)


def test_bad_values_rejected(tmp_path: Path) -> None:
    text = (
        '[[limits.rules]]\nname = "same"\nrequests_per_minute = 0\n'
        '[[limits.rules]]\nname = "same"\nper = "team"\nrequests_per_hour = 5\n'
    )

    problems = problems_of(text, tmp_path)

    assert any("requests_per_minute" in p and "(got 0)" in p for p in problems)
    assert any(".per:" in p and '(got "team")' in p for p in problems)


def test_redis_url_password_rejected(tmp_path: Path) -> None:
    problems = problems_of(
        '[limits]\nstore = "redis"\nredis_url = "redis://:hunter2@127.0.0.1:6379/0"\n', tmp_path
    )

    assert len(problems) == 1
    assert "redis_password_from" in problems[0]
    assert "hunter2" not in problems[0]


def test_missing_password_variable_named(tmp_path: Path) -> None:
    text = '[limits]\nstore = "redis"\nredis_password_from = "REDIS_PASSWORD"\n'

    problems = problems_of(text, tmp_path)

    assert problems == [
        "limits.redis_password_from: environment variable REDIS_PASSWORD is not set; "
        "export it before starting mcp-guard"
    ]


def test_misspelt_keys_in_entries_get_the_entrys_keys(tmp_path: Path) -> None:
    text = (
        '[[limits.rules]]\nname = "x"\nrequests_per_minut = 5\n'
        '[[limits.costs]]\nserver = "files"\nper_cal = 1\n'
        '[[rules]]\nname = "r"\nclients = ["alice"]\nserver = "files"\ntools = ["*"]\ndecision = "auto"\nwrtie = true\n'
    )

    problems = problems_of(text, tmp_path)

    assert "limits.rules[0].requests_per_minut: unknown key; did you mean 'requests_per_minute'?" in problems
    assert "limits.costs[0].per_cal: unknown key; did you mean 'per_call'?" in problems
    assert "rules[0].wrtie: unknown key; did you mean 'write'?" in problems


def test_limit_values_must_be_numbers(tmp_path: Path) -> None:
    problems = problems_of('[[limits.rules]]\nname = "x"\nrequests_per_minute = "30"\n', tmp_path)

    assert len(problems) == 1
    assert problems[0].startswith("limits.rules[0].requests_per_minute:")


def test_cost_entry_without_a_cost_is_rejected(tmp_path: Path) -> None:
    problems = problems_of('[[limits.costs]]\nserver = "files"\n', tmp_path)

    assert len(problems) == 1
    assert "sets neither per_call nor per_second" in problems[0]
