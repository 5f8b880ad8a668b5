"""The token estimate and cutting results to `max_output_tokens`."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.ratelimit.tokens import argument_tokens, result_tokens, truncate_result


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def test_estimate_four_bytes_per_token() -> None:
    assert argument_tokens({}) == 1  # "{}"
    assert argument_tokens({"path": "/tmp"}) == 4  # {"path":"/tmp"} is 15 bytes
    assert result_tokens({"content": [text("abcd")]}) == 1
    assert result_tokens({"content": [text("é" * 4)]}) == 2  # 8 bytes of UTF-8
    image = {"type": "image", "data": "A" * 400, "mimeType": "image/png"}
    assert result_tokens({"content": [image], "structuredContent": {"a": 1}}) == 100 + 2


def test_fitting_result_unchanged() -> None:
    result = {"content": [text("short")]}
    assert truncate_result(result, 10, reason="test", output_schema=False) is result


def test_long_text_cut_with_marker() -> None:
    result = {"content": [text("x" * 10_000)], "isError": False}
    cut = truncate_result(result, 100, reason="max_output_tokens of limit 'small'", output_schema=False)
    assert cut["content"][0]["text"] == "x" * 400
    marker = cut["content"][-1]["text"]
    assert "about 100 of its 2500 estimated tokens" in marker
    assert "'small'" in marker
    assert cut["isError"] is False


def test_oversized_blocks_dropped() -> None:
    image = {"type": "image", "data": "A" * 4000, "mimeType": "image/png"}
    cut = truncate_result({"content": [text("hi"), image]}, 50, reason="r", output_schema=False)
    assert [block["type"] for block in cut["content"]] == ["text", "text"]
    assert "1 content block dropped" in cut["content"][-1]["text"]


def test_structured_content_whole_or_dropped() -> None:
    structured = {"rows": [{"id": index, "name": "n" * 50} for index in range(100)]}
    result = {"content": [text(json.dumps(structured))], "structuredContent": structured}
    cut = truncate_result(result, 200, reason="r", output_schema=False)
    assert "structuredContent" not in cut
    assert "structured content dropped" in cut["content"][-1]["text"]
    assert "isError" not in cut
    # A tool that promises an output schema cannot return a success without its structure.
    strict = truncate_result(result, 200, reason="r", output_schema=True)
    assert strict["isError"] is True
    assert "structuredContent" not in strict


@given(st.text(min_size=1, max_size=400), st.integers(min_value=1, max_value=60))
def test_cut_text_fits_budget(value: str, budget: int) -> None:
    cut = truncate_result({"content": [text(value)]}, budget, reason="r", output_schema=False)
    if cut["content"][0]["type"] == "text" and len(cut["content"]) == 2:
        kept = cut["content"][0]["text"]
        assert value.startswith(kept)
        assert len(kept.encode()) <= budget * 4
    json.dumps(cut)  # whatever was cut, the result is still valid JSON


def test_oversized_metadata_dropped() -> None:
    result = {"content": [text("short")], "_meta": {"trace": "x" * 4000}, "isError": False}
    cut = truncate_result(result, 20, reason="r", output_schema=False)
    assert "_meta" not in cut
    assert cut["content"][0] == text("short")
    assert "metadata dropped" in cut["content"][-1]["text"]
    assert result_tokens(result) > 1000
