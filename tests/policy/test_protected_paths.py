"""The protected places: every form of a path that reaches one is found, and nothing else is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.config.loading import load_config
from mcp_guard.gateway.policy_guard import protected_places
from mcp_guard.policy.protected import (
    MAX_RESOLVED_STRINGS,
    FolderWatch,
    ProtectedPaths,
    ProtectedPlace,
    missing_folders,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    state = tmp_path / "state"
    state.mkdir()
    (state / "audit.key").write_text("key")
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("notes")
    (project / "link").symlink_to(state)
    (project / "policy-link").symlink_to(policy)
    return {"root": tmp_path, "state": state, "policy": policy, "project": project}


@pytest.fixture
def paths(tree: dict[str, Path]) -> ProtectedPaths:
    return ProtectedPaths(
        [
            ProtectedPlace(str(tree["state"]), "the state directory", folder=True),
            ProtectedPlace(str(tree["policy"]), "the policy file", folder=False),
        ]
    )


def rejection(paths: ProtectedPaths, tree: dict[str, Path], arguments: dict[str, Any]) -> str | None:
    return paths.problem(arguments, [str(tree["project"])])


def filled_in(arguments: dict[str, Any], tree: dict[str, Path]) -> dict[str, Any]:
    """Return `arguments` with `{root}` and `{project}` replaced by those folders of the tree."""
    text = (
        json.dumps(arguments).replace("{root}", str(tree["root"])).replace("{project}", str(tree["project"]))
    )
    return dict(json.loads(text))


@pytest.mark.attack("tool argument naming mcp-guard's own files")
@pytest.mark.parametrize(
    "value",
    [
        "{state}",
        "{state}/audit.key",
        "{state}/",
        "{project}/../state/audit.key",
        "../state/audit.key",
        "link",
        "link/audit.key",
        "policy-link",
        "  {policy}\n",
        "file://{state}/audit.key",
        "FILE://localhost{policy}",
        "{project}/%2e%2e/state",
        "{project}/%252e%252e/policy.toml",
        "//{state}",
    ],
)
def test_every_form_of_a_protected_path_is_refused(
    paths: ProtectedPaths, tree: dict[str, Path], value: str
) -> None:
    text = value.format(**{name: str(path) for name, path in tree.items()})

    problem = rejection(paths, tree, {"path": text})

    assert problem is not None
    assert problem.startswith("arguments['path'] names the ")


@pytest.mark.attack("tool argument naming mcp-guard's own files", attempts=4)
def test_protected_paths_anywhere_in_the_arguments(paths: ProtectedPaths, tree: dict[str, Path]) -> None:
    key = str(tree["state"] / "audit.key")
    long_form = "/" * 5000 + key.lstrip("/")

    nested = rejection(paths, tree, {"options": {"files": ["notes.txt", key]}})
    as_key = rejection(paths, tree, {"files": {key: "new content"}})
    long = rejection(paths, tree, {"path": long_form})
    home = paths.problem({"path": "~/audit.key"}, ["/"])

    assert nested is not None
    assert nested.startswith("arguments['options']['files'][1] names the state directory, which")
    assert as_key is not None and as_key.startswith("the key arguments[")
    assert long is not None
    # "~" is taken from the home folder, which contains no protected place here.
    assert home is None


@pytest.mark.legitimate("tool argument naming mcp-guard's own files")
@pytest.mark.parametrize(
    "value",
    [
        "notes.txt",
        "hello from the benchmark",
        "{project}/notes.txt",
        "{root}",
        "{root}/statement.txt",
        "{state}x/file",
        "{root}/policy.toml.bak",
        "https://example.invalid/state",
        "line one\nline two",
        "policy.toml\n",
    ],
)
def test_other_values_pass(paths: ProtectedPaths, tree: dict[str, Path], value: str) -> None:
    text = value.format(**{name: str(path) for name, path in tree.items()})

    assert rejection(paths, tree, {"path": text, "count": 3, "flags": [True, None]}) is None


@pytest.mark.attack("tool argument naming mcp-guard's own files", attempts=3)
def test_relative_path_checked_against_every_base(paths: ProtectedPaths, tree: dict[str, Path]) -> None:
    # A server may take a relative path from its working folder or from a folder it is given.
    bases = [str(tree["project"]), str(tree["root"])]

    from_second = paths.problem({"path": "state/audit.key"}, bases)
    name_in_second = paths.problem({"path": "policy.toml"}, bases)
    dotted = paths.problem({"path": "./policy.toml"}, bases)
    elsewhere = paths.problem({"path": "notes.txt"}, bases)

    assert from_second is not None
    assert name_in_second is not None
    assert dotted is not None
    assert elsewhere is None


@pytest.mark.attack("tool argument naming mcp-guard's own files")
def test_other_unicode_form_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "caf\u00e9"
    folder.mkdir()
    paths = ProtectedPaths([ProtectedPlace(str(folder), "a protected folder", folder=True)])

    decomposed = paths.problem({"path": str(tmp_path / "cafe\u0301" / "s.txt")}, [str(tmp_path)])
    composed = paths.problem({"path": str(folder / "s.txt")}, [str(tmp_path)])

    assert decomposed is not None
    assert composed is not None


@pytest.mark.attack("tool argument naming mcp-guard's own files")
@pytest.mark.parametrize(
    "arguments",
    [
        {"directory": "{root}", "name": "policy.toml"},
        {"directory": "{root}/", "name": "state/audit.key"},
        {"name": "policy.toml", "directory": "file://{root}"},
        {"options": {"base": "{project}/.."}, "files": ["notes.txt", "policy.toml"]},
    ],
)
def test_folder_and_name_in_two_arguments(
    paths: ProtectedPaths, tree: dict[str, Path], arguments: dict[str, Any]
) -> None:
    assert rejection(paths, tree, filled_in(arguments, tree)) is not None


@pytest.mark.legitimate("tool argument naming mcp-guard's own files")
@pytest.mark.parametrize(
    "arguments",
    [
        {"directory": "{root}", "name": "notes.txt"},
        {"path": "{project}/notes.txt", "content": "policy.toml"},
        {"directory": "{project}", "name": "policy.toml"},
    ],
)
def test_folder_and_other_name_pass(
    paths: ProtectedPaths, tree: dict[str, Path], arguments: dict[str, Any]
) -> None:
    assert rejection(paths, tree, filled_in(arguments, tree)) is None


def test_relative_name_in_protected_cwd(paths: ProtectedPaths, tree: dict[str, Path]) -> None:
    problem = paths.problem({"path": "audit.key"}, [str(tree["state"])])

    assert problem is not None
    assert "names the state directory" in problem


def test_too_many_paths_refused(paths: ProtectedPaths, tree: dict[str, Path]) -> None:
    many = [f"{tree['project']}/file-{index}.txt" for index in range(MAX_RESOLVED_STRINGS + 1)]

    problem = rejection(paths, tree, {"paths": many})
    within = rejection(paths, tree, {"paths": many[:MAX_RESOLVED_STRINGS]})

    assert problem is not None
    assert f"more than {MAX_RESOLVED_STRINGS:,} values" in problem
    assert within is None


def test_places_of_a_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    policy = tmp_path / "p.toml"
    policy.write_text('[gateway]\nstate_dir = "state"\nprotected_paths = ["~/.ssh", "secrets"]\n')
    config = load_config(policy)
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    found = protected_places(config, policy_path=str(policy), environ=environ, cwd=str(tmp_path / "proj"))
    places = {place.path: place for place in found}

    assert places[str(tmp_path / "state")].folder
    assert (
        places[str(tmp_path / "xdg" / "mcp-guard")].description
        == "mcp-guard's folder of policies and client settings"
    )
    assert str(home / ".local" / "state" / "mcp-guard") in places
    assert str(tmp_path / "p.toml") in places
    assert places[str(tmp_path / "p.client.json")].description == "mcp-guard's client settings"
    assert str(tmp_path / "proj" / ".mcp.json") in places
    assert str(tmp_path / "proj" / ".vscode" / "mcp.json") in places
    assert str(tmp_path / "proj" / ".claude" / "settings.json") in places
    assert places[str(home / ".claude.json")].description == "an MCP client's settings"
    assert str(tmp_path / "xdg" / "Code" / "User" / "mcp.json") in places
    assert str(home / ".ssh") in places
    assert (
        places[str(tmp_path / "secrets")].description
        == "a path the policy protects (gateway.protected_paths)"
    )


def test_places_of_other_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    policy = tmp_path / "p.toml"
    policy.write_text("")
    config = load_config(policy)
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CODEX_HOME": str(tmp_path / "codex")}

    found = protected_places(config, policy_path=str(policy), environ=environ, cwd=str(tmp_path / "proj"))
    places = {place.path: place for place in found}

    for path in [
        tmp_path / "codex" / "config.toml",
        home / ".gemini" / "settings.json",
        tmp_path / "xdg" / "zed" / "settings.json",
        tmp_path / "xdg" / "Code" / "User" / "settings.json",
        tmp_path / "xdg" / "Code - Insiders" / "User" / "mcp.json",
        tmp_path / "proj" / ".vscode" / "settings.json",
        tmp_path / "proj" / ".gemini" / "settings.json",
        tmp_path / "proj" / "opencode.json",
    ]:
        assert places[str(path)].description == "an MCP client's settings", path
        assert not places[str(path)].folder
    assert places[str(home / ".cursor" / "hooks.json")].description == "Cursor's hooks, which run commands"
    assert places[str(tmp_path / "proj" / ".vscode" / "tasks.json")].description == (
        "VS Code's tasks, which it can run by itself"
    )
    assert places[str(tmp_path / "xdg" / "Code" / "User" / "profiles")].folder
    assert places[str(home / ".claude" / "plugins")].folder
    # A missing folder on the way to a place is protected by its name alone; an existing one is not.
    assert places[str(home / ".claude")] == ProtectedPlace(
        str(home / ".claude"), "a folder for an MCP client's settings", folder=False
    )
    assert places[str(tmp_path / "proj")].description == "a folder for an MCP client's settings"
    assert str(home / ".gemini") not in places
    assert str(home) not in places


@pytest.mark.attack("missing client folder made by renaming a prepared one")
def test_missing_folder_on_path_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "prepared").mkdir(parents=True)
    (home / "prepared" / "settings.json").write_text("{}")
    place = ProtectedPlace(str(home / ".gemini" / "settings.json"), "an MCP client's settings", folder=False)
    paths = ProtectedPaths([place, *missing_folders([place])])

    def problem(value: str) -> str | None:
        return paths.problem({"destination": value}, [str(home)])

    assert problem(str(home / ".gemini")) == (
        "arguments['destination'] names a folder for an MCP client's settings, "
        "which mcp-guard lets no tool call reach (it reads every string in the arguments as a possible "
        "path). A person can read or change it outside the agent"
    )
    assert problem(".gemini") is not None
    assert problem(str(home / "prepared" / ".." / ".gemini/")) is not None
    assert problem(str(home / ".gemini-notes")) is None
    assert problem(str(home / "prepared")) is None


def test_folder_watch_sees_rename_and_return(tmp_path: Path) -> None:
    folder = tmp_path / "home" / ".claude"
    folder.mkdir(parents=True)
    place = ProtectedPlace(str(folder / "settings.json"), "settings", folder=False)
    watch = FolderWatch([place], [str(tmp_path / "home")])

    before = watch.changed()
    folder.rename(tmp_path / "home" / "c2")
    renamed = watch.changed()
    folder.mkdir()
    replaced = watch.changed()
    folder.rmdir()
    (tmp_path / "home" / "c2").rename(folder)
    returned = watch.changed()

    assert watch.folders == (str(folder),)
    assert before is None
    assert renamed == str(folder)
    assert replaced == str(folder)
    assert returned is None
