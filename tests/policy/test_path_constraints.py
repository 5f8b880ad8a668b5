"""`path_under` resolves `..` and symlinks on the real filesystem and compares whole components."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.config.rules import RuleConfig
from mcp_guard.policy import Decision, PolicyEngine
from mcp_guard.policy.paths import MAX_PATH_CHARS, check_path_under, default_resolver

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Tree:
    """A folder tree with an allowed root, a sibling that shares its prefix and escaping symlinks."""

    base: Path
    root: Path
    evil: Path
    outside: Path


def build_tree(base: Path) -> Tree:
    root = base / "allowed"
    evil = base / "allowed_evil"
    outside = base / "outside"
    for folder in (root / "sub", evil, outside):
        folder.mkdir(parents=True)
    (root / "notes.txt").write_text("inside")
    (outside / "secret.txt").write_text("outside")
    (root / "escape").symlink_to(outside)
    (root / "escape_file").symlink_to(outside / "secret.txt")
    (root / "dangling").symlink_to(outside / "not-yet-created")
    (root / "inner").symlink_to(root / "sub")
    (base / "root_link").symlink_to(root)
    return Tree(base=base, root=root, evil=evil, outside=outside)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(tmp_path)


def decide_path(roots: list[str], value: Any, base: str | None = None) -> Decision:
    constraints: dict[str, Any] = {"path_under": roots}
    if base is not None:
        constraints["path_base"] = base
    rule = RuleConfig.model_validate(
        {
            "name": "files",
            "clients": ["*"],
            "server": "files",
            "tools": ["*"],
            "decision": "auto",
            "write": True,
            "arguments": {"path": constraints},
        }
    )
    policy = PolicyEngine([rule], {}, {})
    return policy.decide(
        "desktop", "files", "read", annotations=None, arguments={"path": value}, now=NOW, first_use={}
    )


def allowed(tree: Tree, value: str, base: str | None = None) -> bool:
    return decide_path([str(tree.root)], value, base).kind == "auto"


@pytest.mark.legitimate("path escape")
def test_file_inside_root_allowed(tree: Tree) -> None:
    assert allowed(tree, f"{tree.root}/notes.txt")
    assert allowed(tree, f"{tree.root}/sub/new-file.txt")
    assert allowed(tree, f"{tree.root}/sub/./../notes.txt")


@pytest.mark.legitimate("path escape")
def test_root_itself_allowed(tree: Tree) -> None:
    assert allowed(tree, str(tree.root))
    assert allowed(tree, f"{tree.root}/")


@pytest.mark.attack("path escape", attempts=3)
def test_dot_dot_escape_denied(tree: Tree) -> None:
    assert not allowed(tree, f"{tree.root}/../outside/secret.txt")
    assert not allowed(tree, f"{tree.root}/sub/../../outside/secret.txt")
    assert not allowed(tree, f"{tree.root}/missing/../../outside")


@pytest.mark.attack("path escape", attempts=5)
def test_percent_encoded_dots_denied(tree: Tree) -> None:
    for value in (
        f"{tree.root}/%2e%2e/outside/secret.txt",
        f"{tree.root}/%2E%2E/outside",
        f"{tree.root}/..%2Foutside",
        f"{tree.root}/%252e%252e/outside",
        f"{tree.root}/%00",
    ):
        decision = decide_path([str(tree.root)], value)
        assert decision.kind == "deny", value
        assert "percent-encoded sequence" in getattr(decision, "reason", ""), value


@pytest.mark.attack("path escape", attempts=3)
def test_absolute_path_outside_denied(tree: Tree) -> None:
    assert not allowed(tree, "/etc/passwd")
    assert not allowed(tree, f"{tree.outside}/secret.txt")
    assert not allowed(tree, "/")


@pytest.mark.attack("path escape", attempts=3)
def test_sibling_with_shared_prefix_denied(tree: Tree) -> None:
    assert not allowed(tree, str(tree.evil))
    assert not allowed(tree, f"{tree.evil}/file.txt")
    assert not allowed(tree, f"{tree.root}_evil/file.txt")


@pytest.mark.attack("path escape via symlink", attempts=3)
def test_symlink_escaping_root_denied(tree: Tree) -> None:
    decision = decide_path([str(tree.root)], f"{tree.root}/escape/secret.txt")

    assert decision.kind == "deny"
    assert "is outside the allowed folders" in getattr(decision, "reason", "")
    assert not allowed(tree, f"{tree.root}/escape_file")
    assert not allowed(tree, f"{tree.root}/escape")


@pytest.mark.attack("path escape via symlink")
def test_dangling_symlink_escaping_root_denied(tree: Tree) -> None:
    assert not allowed(tree, f"{tree.root}/dangling")


@pytest.mark.legitimate("path escape via symlink")
def test_symlink_within_root_allowed(tree: Tree) -> None:
    assert allowed(tree, f"{tree.root}/inner/file.txt")


@pytest.mark.attack("path escape via symlink")
def test_root_given_as_symlink(tree: Tree) -> None:
    roots = [str(tree.base / "root_link")]

    assert decide_path(roots, f"{tree.root}/notes.txt").kind == "auto"
    assert decide_path(roots, f"{tree.base}/root_link/notes.txt").kind == "auto"
    assert decide_path(roots, f"{tree.base}/root_link/escape/secret.txt").kind == "deny"


@pytest.mark.attack("path escape")
def test_relative_path_needs_base(tree: Tree) -> None:
    decision = decide_path([str(tree.root)], "notes.txt")

    assert decision.kind == "deny"
    assert "is a relative path, but only absolute paths are allowed here" in getattr(decision, "reason", "")


@pytest.mark.attack("path escape", attempts=3)
def test_relative_path_joined_to_base(tree: Tree) -> None:
    base = str(tree.root)

    assert allowed(tree, "notes.txt", base)
    assert allowed(tree, "sub/../notes.txt", base)
    assert allowed(tree, "", base)
    assert not allowed(tree, "../outside/secret.txt", base)
    assert not allowed(tree, "escape/secret.txt", base)
    assert not allowed(tree, "file:///etc/passwd", base)


def path_rule(name: str, root: Path, base: Path | None, decision: str = "auto") -> RuleConfig:
    constraints: dict[str, Any] = {"path_under": [str(root)]}
    if base is not None:
        constraints["path_base"] = str(base)
    return RuleConfig.model_validate(
        {
            "name": name,
            "clients": ["*"],
            "server": "files",
            "tools": ["*"],
            "decision": decision,
            "write": True,
            "arguments": {"path": constraints, "paths": constraints},
        }
    )


def decide_with(
    rules: list[RuleConfig], arguments: dict[str, Any], schema: dict[str, Any] | None = None
) -> Decision:
    return PolicyEngine(rules, {}, {}).decide(
        "desktop",
        "files",
        "read",
        annotations=None,
        arguments=arguments,
        now=NOW,
        first_use={},
        input_schema=schema,
    )


@pytest.mark.attack("relative path read against the server's own folder")
def test_relative_path_forwarded_joined(tree: Tree) -> None:
    decision = decide_with([path_rule("files", tree.root, tree.root)], {"path": "sub/../notes.txt"})

    assert decision.kind == "auto"
    assert decision.arguments == {"path": f"{tree.root}/sub/../notes.txt"}


def test_nested_and_listed_paths_joined(tree: Tree) -> None:
    sent = {
        "paths": ["notes.txt", str(tree.root / "sub"), ["sub"]],
        "options": {"target": {"path": "sub"}, "label": "notes.txt"},
    }

    decision = decide_with([path_rule("files", tree.root, tree.root)], sent)

    assert decision.kind == "auto"
    assert decision.arguments == {
        "paths": [f"{tree.root}/notes.txt", str(tree.root / "sub"), [f"{tree.root}/sub"]],
        "options": {"target": {"path": f"{tree.root}/sub"}, "label": "notes.txt"},
    }
    assert sent["paths"] == ["notes.txt", str(tree.root / "sub"), ["sub"]]


def test_absolute_paths_forwarded_unchanged(tree: Tree) -> None:
    decision = decide_with([path_rule("files", tree.root, tree.root)], {"path": str(tree.root / "notes.txt")})

    assert decision.kind == "auto"
    assert decision.arguments is None


def test_rejected_relative_path_left_as_sent(tree: Tree) -> None:
    decision = decide_with([path_rule("files", tree.root, tree.root)], {"path": "~/notes.txt"})

    assert decision.kind == "deny"
    assert 'starts with "~"' in getattr(decision, "reason", "")


def test_relative_schema_default_added_joined(tree: Tree) -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string", "default": "notes.txt"}}}

    decision = decide_with([path_rule("files", tree.root, tree.root)], {}, schema)

    assert decision.kind == "auto"
    assert decision.arguments == {"path": f"{tree.root}/notes.txt"}


@pytest.mark.attack("relative path read against the server's own folder", attempts=2)
def test_second_rule_checks_joined_path(tree: Tree) -> None:
    # The first rule joins "secret.txt" to its own base. The second rule checks that joined path,
    # not its own join, so it denies the call.
    first = path_rule("joins to outside", tree.outside, tree.outside)
    second = path_rule("joins to allowed", tree.root, tree.root, decision="notify")

    decision = decide_with([first, second], {"path": "secret.txt"})
    swapped = decide_with([second, first], {"path": "notes.txt"})

    assert decision.kind == "deny"
    assert decision.rule == "joins to allowed"
    assert decision.arguments == {"path": f"{tree.outside}/secret.txt"}
    assert swapped.kind == "deny"
    assert swapped.rule == "joins to outside"


@pytest.mark.attack("path escape", attempts=2)
def test_home_shorthand_denied(tree: Tree) -> None:
    assert not allowed(tree, "~/.ssh/id_rsa", str(tree.root))
    assert not allowed(tree, "~root/.ssh/id_rsa", str(tree.root))


@pytest.mark.attack("path escape", attempts=4)
def test_syntax_tricks_denied(tree: Tree) -> None:
    assert not allowed(tree, f"{tree.root}/notes.txt\0.png")
    assert not allowed(tree, f"{tree.root}\\..\\outside")
    assert not allowed(tree, f"{tree.root}/\ud800")
    assert not allowed(tree, f"{tree.root}/" + "a" * MAX_PATH_CHARS)


def test_several_roots(tree: Tree) -> None:
    roots = [str(tree.root), str(tree.outside)]

    assert decide_path(roots, f"{tree.outside}/secret.txt").kind == "auto"
    assert decide_path(roots, f"{tree.evil}/x").kind == "deny"


def test_filesystem_root_allows_everything(tree: Tree) -> None:
    assert decide_path(["/"], "/etc/passwd").kind == "auto"


def test_resolver_is_injectable() -> None:
    calls: list[str] = []

    def resolve(path: str) -> str:
        calls.append(path)
        return "/data/allowed/x" if path == "/link" else path

    assert check_path_under("/link", ["/data/allowed"], None, resolve) is None
    assert check_path_under("/data/allowed_evil", ["/data/allowed"], None, resolve) is not None
    assert calls == ["/link", "/data/allowed", "/data/allowed_evil", "/data/allowed"]


@pytest.mark.attack("path escape via symlink")
def test_resolver_errors_denied() -> None:
    def resolve(path: str) -> str:
        raise OSError("too many levels of symbolic links")

    problem = check_path_under("/data/x", ["/data"], None, resolve)

    assert problem == "cannot be resolved as a file path (OSError); send a valid path"


# Path pieces that an attacker would combine: traversal, encodings, symlinks and look-alike names.
SEGMENTS = st.sampled_from(
    ["..", ".", "", "allowed", "allowed_evil", "outside", "sub", "escape", "inner", "dangling", "root_link",
     "notes.txt", "secret.txt", "%2e%2e", "~", "\\..", "x"]
)  # fmt: skip


@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    yield build_tree(tmp_path_factory.mktemp("paths"))


@settings(max_examples=400, deadline=None)
@given(segments=st.lists(SEGMENTS, max_size=8), relative=st.booleans())
@pytest.mark.attack("path escape", attempts=400)
def test_no_generated_path_escapes(shared_tree: Tree, segments: list[str], relative: bool) -> None:
    tail = "/".join(segments)
    value = tail if relative else f"{shared_tree.root}/{tail}"

    decision = decide_path([str(shared_tree.root)], value, base=str(shared_tree.root))

    if decision.kind == "auto":
        # Checked with pathlib and part-wise comparison, independently of the engine's string test.
        target = (shared_tree.root / value).resolve()
        assert target.is_relative_to(shared_tree.root.resolve()), value
        assert "%" not in value
        assert "~" not in value.split("/", 1)[0]


def test_default_resolver_follows_links(tree: Tree) -> None:
    assert default_resolver(f"{tree.root}/escape/secret.txt") == os.path.realpath(tree.outside / "secret.txt")
