"""The run_code tool's definition, argument checks and result shape."""

from __future__ import annotations

import jsonschema
import pytest

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.downstream.catalog import LEGACY_ERA, MODERN_ERA, export_builtin_tool
from mcp_guard.sandbox.base import CodeError, RichOutput, RunOutcome
from mcp_guard.sandbox.tool import (
    OUTPUT_SCHEMA,
    CodeArgumentError,
    parse_arguments,
    render_outcome,
    tool_definition,
)

SETTINGS = SandboxSettings(max_code_bytes=100)
LANGUAGES = frozenset({"python", "shell"})


def outcome(**fields: object) -> RunOutcome:
    base: dict[str, object] = {"stdout": "", "stderr": "", "exit_code": 0, "seconds": 0.5}
    return RunOutcome(**{**base, **fields})  # type: ignore[arg-type]


def test_definition_valid_in_both_eras() -> None:
    tool = export_builtin_tool("sandbox", tool_definition(SETTINGS, LANGUAGES))

    assert tool.eras == {LEGACY_ERA, MODERN_ERA}
    assert tool.definition["inputSchema"]["properties"]["language"]["enum"] == ["python", "shell"]


def test_description_says_what_the_interpreters_offer() -> None:
    local = tool_definition(SETTINGS, LANGUAGES, "local")["description"]
    wasm = tool_definition(SETTINGS, {"python"}, "wasm")["description"]

    assert "POSIX sh, not bash" in local
    assert "standard library only" in local
    assert "may import only: math, json" in wasm


def test_language_unavailable_lists_choices() -> None:
    with pytest.raises(
        CodeArgumentError, match="language 'ruby' is not available in this sandbox; use one of python, shell"
    ):
        parse_arguments({"language": "ruby", "code": "puts 1"}, SETTINGS, LANGUAGES)


@pytest.mark.attack("oversized or pathological input")
def test_code_size_counted_in_bytes() -> None:
    with pytest.raises(CodeArgumentError, match="code is 102 bytes, over the 100-byte limit"):
        parse_arguments({"language": "python", "code": "é" * 51}, SETTINGS, LANGUAGES)


@pytest.mark.attack("argument constraint evasion")
def test_unexpected_argument_rejected() -> None:
    with pytest.raises(CodeArgumentError, match="unexpected argument 'env'"):
        parse_arguments({"language": "python", "code": "1", "env": {"A": "1"}}, SETTINGS, LANGUAGES)


def test_result_clean_run_matches_schema() -> None:
    result = render_outcome(outcome(stdout="hi\n", results=[RichOutput("text", "42")]), 1000)

    assert result["isError"] is False
    assert result["structuredContent"]["value"] == "42"
    jsonschema.validate(result["structuredContent"], OUTPUT_SCHEMA)


@pytest.mark.parametrize(
    "fields",
    [
        {"error": CodeError("ValueError", "bad", "Traceback ...")},
        {"stopped": "timeout", "exit_code": None},
        {"exit_code": 3},
    ],
)
def test_result_failures_are_tool_errors(fields: dict[str, object]) -> None:
    result = render_outcome(outcome(**fields), 1000)

    assert result["isError"] is True
    jsonschema.validate(result["structuredContent"], OUTPUT_SCHEMA)


def test_result_capped_output_marked() -> None:
    result = render_outcome(outcome(stdout="x" * 1000, output_capped=True, stopped="output_cap"), 1000)

    assert "output stopped at the 1000-byte cap" in result["content"][0]["text"]


def test_result_images_and_long_values() -> None:
    results = [RichOutput("png", "iVBORw0KGgo="), RichOutput("text", "v" * 5000)]

    result = render_outcome(outcome(results=results), 1000)

    assert result["content"][1] == {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
    assert len(result["structuredContent"]["value"]) < 1100
    assert result["structuredContent"]["outputCapped"] is True
