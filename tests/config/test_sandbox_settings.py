"""The `[sandbox]` section of a policy file: the run_code tool and its backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.config import GatewayConfig, load_config
from mcp_guard.errors import ConfigError

RUN_CODE_RULE = """
[[rules]]
name = "code"
clients = ["*"]
server = "sandbox"
tools = ["run_code"]
write = true
decision = "auto"
"""


def load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "policy.toml"
    path.write_text('[servers.files]\ncommand = "x"\n' + text)
    return load_config(path, environ={})


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    return error.value.problems


def test_sandbox_absent_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "").sandbox is None


def test_sandbox_defaults_no_network_no_sessions(tmp_path: Path) -> None:
    sandbox = load(tmp_path, "[sandbox]\n").sandbox

    assert sandbox is not None
    assert sandbox.allowed_hosts == []
    assert sandbox.session_sandboxes is False


def test_auto_backend_e2b_only_with_key(tmp_path: Path) -> None:
    sandbox = load(tmp_path, '[sandbox]\ne2b.api_key_from = "MY_E2B_KEY"\n').sandbox

    assert sandbox is not None
    assert sandbox.chosen_backend({}) == "local"
    assert sandbox.chosen_backend({"MY_E2B_KEY": ""}) == "local"
    assert sandbox.chosen_backend({"MY_E2B_KEY": "e2b_123"}) == "e2b"


def test_rules_name_sandbox_only_when_configured(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, RUN_CODE_RULE)

    assert len(problems) == 1
    assert "add a [sandbox] section to turn it on" in problems[0]
    assert load(tmp_path, "[sandbox]\n" + RUN_CODE_RULE).rules[0].server == "sandbox"


def test_server_id_sandbox_reserved(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[servers.sandbox]\ncommand = "y"\n')

    assert any("reserved for the built-in run_code tool" in problem for problem in problems)


def test_tool_name_without_separator(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[sandbox]\ntool_name = "files__run"\n')

    assert len(problems) == 1
    assert "contains '__'" in problems[0]


def test_allowed_hosts_need_filtering_backend(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[sandbox]\nbackend = "local"\nallowed_hosts = ["pypi.org"]\n')

    assert len(problems) == 1
    assert "cannot filter network traffic by host" in problems[0]


def test_allowed_hosts_are_bare_host_names(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, '[sandbox]\nbackend = "e2b"\nallowed_hosts = ["https://pypi.org/simple"]\n'
    )

    assert len(problems) == 1
    assert "'https://pypi.org/simple' is not a host name" in problems[0]


def test_pyodide_dir_relative_to_policy(tmp_path: Path) -> None:
    sandbox = load(tmp_path, '[sandbox.wasm]\npyodide_dir = "runtime/pyodide"\n').sandbox

    assert sandbox is not None
    assert sandbox.wasm.pyodide_dir == str(tmp_path / "runtime" / "pyodide")


def test_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[sandbox]\ntimeout_second = 5\n")

    assert problems == ["sandbox.timeout_second: unknown key; did you mean 'timeout_seconds'?"]
