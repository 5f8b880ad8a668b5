"""Which commands need the variables a policy file references, and the forms of `check`'s argument."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from support import ROOT, fixture_server, stdio_gateway, write_policy

pytestmark = pytest.mark.anyio

SECRET_VARIABLE = "MCP_GUARD_TEST_UNSET_SECRET"


def policy_with_secret(tmp_path: Path) -> Path:
    server = {**fixture_server("alpha"), "env_from": {"API_KEY": f"${{{SECRET_VARIABLE}}}"}}
    return write_policy(tmp_path, {"alpha": server})


async def mcp_guard(*args: str) -> tuple[int, str]:
    environment = {name: value for name, value in os.environ.items() if name != SECRET_VARIABLE}
    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", *args], cwd=ROOT, check=False, env=environment
    )
    return completed.returncode, (completed.stdout + completed.stderr).decode()


@pytest.mark.parametrize("command", [["approvals", "list"], ["audit", "verify"], ["pins", "review"]])
async def test_state_commands_run_without_server_secrets(tmp_path: Path, command: list[str]) -> None:
    policy = policy_with_secret(tmp_path)

    code, output = await mcp_guard(command[0], "--config", str(policy), *command[1:])

    assert SECRET_VARIABLE not in output
    assert code != 2


@pytest.mark.parametrize("mode", [["--offline"], []])
async def test_check_reports_server_without_its_variable(tmp_path: Path, mode: list[str]) -> None:
    policy = policy_with_secret(tmp_path)

    code, output = await mcp_guard("check", *mode, str(policy))

    assert code == 1
    assert (
        f"[alpha] NOT AVAILABLE: servers.alpha.env_from.API_KEY reads environment variable "
        f"{SECRET_VARIABLE}, which is not set" in output
    )


async def test_gateway_serves_the_servers_that_have_their_variables(tmp_path: Path) -> None:
    # One server's missing variable leaves the others serving, as an unreachable server does.
    beta = {**fixture_server("beta"), "env_from": {"API_KEY": f"${{{SECRET_VARIABLE}}}"}}
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha"), "beta": beta})
    environment = {name: value for name, value in os.environ.items() if name != SECRET_VARIABLE}

    async with stdio_gateway(policy, env=environment) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("alpha__echo", {"text": "still served"})

    assert "alpha__echo" in names
    assert not any(name.startswith("beta__") for name in names)
    assert result.content[0].text == "still served"


async def test_check_takes_the_file_with_or_without_config(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    positional = await mcp_guard("check", "--offline", str(policy))
    option = await mcp_guard("check", "--offline", "--config", str(policy))
    both = await mcp_guard("check", "--offline", str(policy), "--config", str(policy))

    assert positional[0] == 0
    assert option[0] == 0
    assert option[1] == positional[1]
    assert both[0] == 2


async def test_unknown_approval_names_config(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    code, output = await mcp_guard("approvals", "--config", str(policy), "approve", "no-such-request")

    hint = shlex.split(output.split("`")[1])
    assert code == 1
    assert "'no-such-request' does not exist" in output
    assert Path(hint[0]).is_absolute()
    assert await anyio.Path(hint[0]).is_file()
    assert hint[1:] == ["approvals", "--config", str(policy.resolve()), "list"]


async def test_missing_policy_message_fits_the_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")

    run = await mcp_guard("run", "--config", missing)
    listing = await mcp_guard("approvals", "--config", missing, "list")

    assert run[0] == 2
    assert f"{missing}: 1 problem found, nothing was started:" in run[1]
    assert listing[0] == 2
    assert f"{missing}: 1 problem found:" in listing[1]
    assert "nothing was started" not in listing[1]


async def test_run_warns_of_undefined_client(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, clients={"agent": {}})
    command = [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy), "--client", "agnet"]

    completed = await anyio.run_process(command, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)

    stderr = completed.stderr.decode()
    assert completed.returncode == 0
    warnings = [json.loads(line) for line in stderr.splitlines() if '"client_not_defined"' in line]
    assert [(warning["client"], warning["hint"]) for warning in warnings] == [
        ("agnet", "did you mean 'agent'?")
    ]


@pytest.mark.attack("oversized or pathological input")
async def test_gateway_refuses_to_start_itself_again(tmp_path: Path) -> None:
    # A gateway started by a gateway that runs the same policy would start another, without end.
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    environment = {**os.environ, "MCP_GUARD_POLICY_CHAIN": os.pathsep.join(["/elsewhere.toml", str(policy)])}

    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)],
        cwd=ROOT,
        check=False,
        env=environment,
    )

    assert completed.returncode == 2
    assert (
        f"runs the same policy {policy.resolve()}, and would start itself again" in completed.stderr.decode()
    )


async def test_gateway_passes_its_policy_to_its_servers(tmp_path: Path) -> None:
    # The fixture echoes its environment; the chain must reach it with this gateway's policy.
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    async with stdio_gateway(policy) as client:
        result = await client.call_tool("alpha__env", {"name": "MCP_GUARD_POLICY_CHAIN"})

    assert result.content[0].text == str(policy.resolve())


@pytest.mark.parametrize("command", [["approvals", "list"], ["audit", "search"], ["pins", "review"]])
async def test_config_after_subcommand_is_used(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "elsewhere.toml"

    code, output = await mcp_guard(*command, "--config", str(missing))

    assert code == 2
    assert f"{missing}: 1 problem found" in output
