"""Policy files are accepted whole or rejected whole, with errors that name the key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.config import HttpServerConfig, StdioServerConfig, load_config, parse_config
from mcp_guard.config.loading import resolve_templates, server_environment_problems
from mcp_guard.errors import ConfigError


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=environ or {})
    assert str(path) in str(error.value)
    return error.value.problems


def test_minimal_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[servers.git]\ncommand = "mcp-server-git"\ncwd = "repo"\n[servers.web]\nurl = "http://127.0.0.1:9/mcp"\n'
    )

    config = load_config(path, environ={})

    assert isinstance(config.servers["git"], StdioServerConfig)
    assert isinstance(config.servers["web"], HttpServerConfig)
    assert config.servers["git"].cwd == str(tmp_path / "repo")
    assert config.gateway.state_dir == str(tmp_path / ".mcp-guard")
    assert list(config.servers) == ["git", "web"]


def test_state_dir_home_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "policy.toml"
    path.write_text('[gateway]\nstate_dir = "~/mcp-guard-state"\n')

    from_file = load_config(path, environ={})
    relative = load_config(path, environ={"MCP_GUARD_STATE_DIR": "second-state"})
    home = load_config(path, environ={"MCP_GUARD_STATE_DIR": "~/third-state"})

    assert from_file.gateway.state_dir == str(tmp_path / "home" / "mcp-guard-state")
    assert relative.gateway.state_dir == str(tmp_path / "second-state")
    assert home.gateway.state_dir == str(tmp_path / "home" / "third-state")


def test_unknown_key_suggests_fix(tmp_path: Path) -> None:
    problems = problems_of('[gateway]\npage_sise = 3\n[servers.git]\ncommand = "x"\nagrs = []\n', tmp_path)

    assert "gateway.page_sise: unknown key; did you mean 'page_size'?" in problems
    assert "servers.git.agrs: unknown key; did you mean 'args'?" in problems


def test_every_problem_reported(tmp_path: Path) -> None:
    text = (
        '[servers.a]\ncommand = "x"\ncall_timeout_seconds = -1\n'
        '[servers.b]\n[servers."bad id"]\ncommand = "y"\n'
    )

    problems = problems_of(text, tmp_path)

    assert len(problems) == 3
    assert any(p.startswith("servers.a.call_timeout_seconds:") and "(got -1)" in p for p in problems)
    assert any(p.startswith("servers.b:") and "exactly one of `command`" in p for p in problems)
    assert any(p.startswith('servers."bad id": ') and p.count("bad id") == 1 for p in problems)


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    problems = problems_of("[servers.a\ncommand = 1\n", tmp_path)

    assert problems[0].startswith("invalid TOML")
    assert "line 1" in problems[0]


def test_missing_file_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "nope.toml")

    assert "does not exist" in str(error.value)


def test_literal_secret_rejected(tmp_path: Path) -> None:
    problems = problems_of('[servers.a]\ncommand = "x"\nenv = { GITHUB_TOKEN = "ghp_abc" }\n', tmp_path)

    assert "ghp_abc" not in "\n".join(problems)
    assert "env_from" in problems[0]
    assert problems[0].startswith("servers.a.env:")


def test_url_credentials_masked(tmp_path: Path) -> None:
    problems = problems_of('[servers.a]\nurl = "https://user:hunter2@example.invalid/mcp"\n', tmp_path)

    assert "hunter2" not in problems[0]
    assert "headers_from" in problems[0]


def test_missing_server_variable_named_per_server(tmp_path: Path) -> None:
    # The file loads: only the server that reads the variable is unavailable, when it starts.
    path = tmp_path / "policy.toml"
    path.write_text('[servers.a]\ncommand = "x"\nenv_from = { API_KEY = "${NOT_SET_ANYWHERE}" }\n')
    config = load_config(path, environ={})

    problems = server_environment_problems("a", config.servers["a"], {})

    assert problems == [
        "servers.a.env_from.API_KEY reads environment variable NOT_SET_ANYWHERE, which is not set; "
        "export it before starting mcp-guard"
    ]
    assert server_environment_problems("a", config.servers["a"], {"NOT_SET_ANYWHERE": "x"}) == []


def test_duplicate_prefix_rejected() -> None:
    data = {"servers": {"a": {"command": "x", "prefix": "p"}, "b": {"command": "y", "prefix": "p"}}}

    with pytest.raises(ConfigError) as error:
        parse_config(data, environ={})

    assert "both use the prefix 'p'" in str(error.value)


def test_templates_resolved_at_use() -> None:
    resolved = resolve_templates({"Authorization": "Bearer ${TOKEN}"}, {"TOKEN": "t-1"})

    assert resolved == {"Authorization": "Bearer t-1"}


def test_config_repr_has_no_secret_values() -> None:
    config = parse_config(
        {"servers": {"a": {"command": "x", "env_from": {"API_KEY": "${SECRET_VALUE_VAR}"}}}},
        environ={"SECRET_VALUE_VAR": "s3cr3t-value"},
    )

    assert "s3cr3t-value" not in repr(config)
