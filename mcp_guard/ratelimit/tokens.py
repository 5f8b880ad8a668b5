"""The token estimate behind token limits, and cutting a result down to a token budget.

The estimate is deterministic and needs no tokenizer: one token per four bytes
of UTF-8, rounded up. Arguments are measured as compact JSON
(`{"path":"/tmp"}`). A result is measured block by block: the text of a text
block, the base64 data of an image or audio block, the text or blob of an
embedded resource, and the JSON of any other block. Its `structuredContent`
and any other member (such as `_meta`) count as compact JSON. Real
tokenizers give English prose about four bytes per token, so the estimate is
of the right size for text and errs high for code, numbers and base64.
"""

from __future__ import annotations

import json
from typing import Any

BYTES_PER_TOKEN = 4
TRUNCATION_MARKER = "[mcp-guard: result cut to about {budget} of its {size} estimated tokens ({reason})]"


def tokens_of_bytes(size: int) -> int:
    """Return the estimated tokens of `size` bytes of text."""
    return -(-size // BYTES_PER_TOKEN)


def argument_tokens(arguments: dict[str, Any]) -> int:
    """Return the estimated tokens of a call's arguments."""
    return tokens_of_bytes(len(_compact(arguments)))


def result_tokens(result: dict[str, Any]) -> int:
    """Return the estimated tokens of a tools/call result."""
    size = sum(_block_bytes(block) for block in result.get("content") or [])
    if "structuredContent" in result:
        size += len(_compact(result["structuredContent"]))
    extra = _extra_members(result)
    if extra:
        size += len(_compact(extra))
    return tokens_of_bytes(size)


def _extra_members(result: dict[str, Any]) -> dict[str, Any]:
    """Return the members of a result other than its content, structure and error flag (`_meta`, say)."""
    return {
        key: value for key, value in result.items() if key not in ("content", "structuredContent", "isError")
    }


def truncate_result(
    result: dict[str, Any], max_tokens: int, *, reason: str, output_schema: bool
) -> dict[str, Any]:
    """Return `result` cut to about `max_tokens` estimated tokens, or `result` itself if it fits.

    Text is cut at a character boundary. Blocks that do not fit whole (images,
    audio, resources) are dropped. `structuredContent` is kept only whole, so the
    client never receives a broken structure. A text block at the end states what
    was cut. When the tool declares an output schema, a result without its
    structured content would break the schema's promise, so such a result is
    returned as a tool error.
    """
    size = result_tokens(result)
    if size <= max_tokens:
        return result
    budget = max_tokens * BYTES_PER_TOKEN
    cut: dict[str, Any] = {"isError": result["isError"]} if "isError" in result else {}
    notes = []
    extra = _extra_members(result)
    if extra:
        # Metadata goes first, as it is small when honest; too large, it is dropped whole.
        needed = len(_compact(extra))
        if needed <= budget:
            cut.update(extra)
            budget -= needed
        else:
            notes.append("metadata dropped")
    kept: list[Any] = []
    dropped = 0
    for block in result.get("content") or []:
        needed = _block_bytes(block)
        if needed <= budget:
            kept.append(block)
            budget -= needed
        elif isinstance(block, dict) and isinstance(block.get("text"), str) and budget > 0:
            kept.append({**block, "text": _cut_utf8(block["text"], budget)})
            budget = 0
        else:
            dropped += 1
    if dropped:
        notes.append(f"{dropped} content block{'s' if dropped != 1 else ''} dropped")
    if "structuredContent" in result:
        structured = _compact(result["structuredContent"])
        if len(structured) <= budget:
            cut["structuredContent"] = result["structuredContent"]
        else:
            notes.append("structured content dropped")
            if output_schema:
                cut["isError"] = True
    marker = TRUNCATION_MARKER.format(budget=max_tokens, size=size, reason="; ".join([reason, *notes]))
    cut["content"] = [*kept, {"type": "text", "text": marker}]
    return cut


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _block_bytes(block: Any) -> int:
    if not isinstance(block, dict):
        return len(_compact(block))
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return len(block["text"].encode())
    if kind in ("image", "audio") and isinstance(block.get("data"), str):
        return len(block["data"])
    resource = block.get("resource")
    if kind == "resource" and isinstance(resource, dict):
        payload = resource.get("text", resource.get("blob", ""))
        return len(payload.encode()) if isinstance(payload, str) else len(_compact(resource))
    return len(_compact(block))


def _cut_utf8(text: str, budget: int) -> str:
    """Return the longest start of `text` whose UTF-8 encoding fits in `budget` bytes."""
    return text.encode()[:budget].decode(errors="ignore")
