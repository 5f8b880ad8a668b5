"""Tool definitions for the policy: their hash, their hidden text, their cleaning and their diffs.

These pure functions back the pinning of tool definitions (trust on first use)
and the hygiene of descriptions before they are re-exported to clients. They
read wire dicts (`name`, `title`, `description`, `inputSchema`, ...) and never
do I/O; storing pins is left to `mcp_guard.pinning`.

The hash covers exactly the fields a model reads or relies on: name, title,
description, input and output schema and annotations. `_meta`, `icons` and
`execution` are left out. Strings are hashed as received, without Unicode
normalisation. Normalising would give two different strings the same hash, so a
change that only swaps a composed character for its decomposed form would go
unnoticed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

HASH_PREFIX = "sha256:"
# NOTE: a tool's `_meta` and `icons` are re-exported but not pinned, so a server can change them
# without a review.
HASHED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
# The maximum description length measured on the published filesystem and everything servers
# (2026.8.31) and the git and time servers (2026.10.19) was 457 characters. 2000 leaves room for richer servers and
# still bounds how much text one tool puts in front of the model.
DEFAULT_MAX_DESCRIPTION_LENGTH = 2000
MAX_TITLE_LENGTH = 200
TRUNCATION_MARKER = " [truncated]"
# Characters of matched text quoted in a finding.
MAX_EXCERPT_LENGTH = 60

# Splits after a sentence's closing punctuation and at line breaks.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?:;])\s+|\n")
_NEWLINES = re.compile("\r\n|[\r\x85\u2028\u2029]")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
# Letters and marks that render as nothing: Hangul fillers and the combining grapheme joiner.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u034f")
# JSON Schema keywords whose values are schemas (or maps or lists of schemas). Only these are
# walked, so strings inside `default`, `enum`, `const` or `examples` (data, not text for the
# model) are never changed.
_SCHEMA_KEYWORDS = frozenset(
    {"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"}
)
_SCHEMA_LIST_KEYWORDS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_TEXT_KEYWORDS = ("title", "description")


def definition_hash(tool: Mapping[str, Any]) -> str:
    """Hash the fields of a tool definition that pinning covers.

    The input is a canonical JSON text of `HASHED_FIELDS` (sorted keys, no
    whitespace, non-ASCII kept as is, encoded as UTF-8). A field that is missing
    and a field whose value is null hash the same, because the protocol gives
    them the same meaning.

    Returns:
        `sha256:` followed by 64 hex digits.

    Raises:
        TypeError: A value is not JSON (the definition did not come off the wire).
    """
    text = json.dumps(pinned_fields(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a JSON string may carry a lone surrogate escape, which strict UTF-8 rejects.
    return HASH_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def pinned_fields(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Return the fields of a tool definition that `definition_hash` covers, leaving out null ones."""
    return {field: tool[field] for field in HASHED_FIELDS if tool.get(field) is not None}


def definition_diff(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    old_label: str = "approved",
    new_label: str = "pending",
) -> str:
    """Return a unified diff of the pretty-printed hashed fields of two definitions.

    Args:
        old: The definition before the change, or None for a tool never approved
            (every line is then shown as added).
        new: The definition after the change.
        old_label: File name shown on the `---` line.
        new_label: File name shown on the `+++` line.

    Returns:
        The diff without a trailing newline; an empty string when the hashed fields are equal.
    """
    old_lines = [] if old is None else _pretty(old).splitlines()
    lines = difflib.unified_diff(old_lines, _pretty(new).splitlines(), old_label, new_label, lineterm="")
    return "\n".join(lines)


def description_diff(old: str, new: str) -> str:
    """Return a unified diff of two descriptions, one sentence or line per diff line.

    A description is one JSON string, so `definition_diff` shows a changed
    description as one long replaced line; this diff shows which sentences changed.

    Returns:
        The diff without a trailing newline; an empty string when the texts are equal.
    """
    old_lines, new_lines = _SENTENCE_BREAK.split(old), _SENTENCE_BREAK.split(new)
    lines = difflib.unified_diff(
        old_lines, new_lines, "approved description", "pending description", lineterm=""
    )
    return "\n".join(lines)


def is_hidden_character(char: str) -> bool:
    """Return whether `char` is invisible text that `clean_description` removes.

    Hidden are C0 and C1 controls except tab and newline, zero-width and bidi
    controls, Unicode tag characters, variation selectors, every other format
    character (category Cf, such as the soft hyphen) and letters that render as
    nothing. Variation selectors go too: they can carry data after a visible
    character, and dropping them only changes how an emoji is drawn.
    """
    code = ord(char)
    if char in "\t\n":
        return False
    return (
        0xE0000 <= code <= 0xE007F
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or char in _BLANK_LETTERS
        or unicodedata.category(char) in ("Cc", "Cf")
    )


def clean_description(text: str, max_length: int = DEFAULT_MAX_DESCRIPTION_LENGTH) -> str:
    """Remove hidden characters from a description and cap its length.

    Line breaks of every kind (CR LF, CR, NEL, U+2028, U+2029) become `\\n`
    first, so removing controls never joins two lines.

    Args:
        text: The description as the downstream server sent it.
        max_length: Maximum length of the result in characters, the truncation marker included.

    Returns:
        The cleaned text; when it was longer than `max_length`, its start followed by `TRUNCATION_MARKER`.

    Raises:
        ValueError: `max_length` leaves no room for text before the marker.
    """
    if max_length <= len(TRUNCATION_MARKER):
        raise ValueError(f"max_length must be more than {len(TRUNCATION_MARKER)}, got {max_length}")
    cleaned = _remove_hidden(text)
    if len(cleaned) <= max_length:
        return cleaned
    return cleaned[: max_length - len(TRUNCATION_MARKER)].rstrip() + TRUNCATION_MARKER


def clean_definition(
    tool: Mapping[str, Any], max_description_length: int = DEFAULT_MAX_DESCRIPTION_LENGTH
) -> dict[str, Any]:
    """Return a copy of a tool definition with every text meant for the model cleaned.

    Cleans (see `clean_description`) the description, the title, the
    annotations' title and each `title` and `description` inside the input and
    output schemas. Titles are capped at `MAX_TITLE_LENGTH`, the rest at
    `max_description_length`. Other values are copied unchanged.
    """
    cleaned = dict(tool)
    if isinstance(tool.get("description"), str):
        cleaned["description"] = clean_description(tool["description"], max_description_length)
    if isinstance(tool.get("title"), str):
        cleaned["title"] = clean_description(tool["title"], MAX_TITLE_LENGTH)
    annotations = tool.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
        cleaned["annotations"] = {
            **annotations,
            "title": clean_description(annotations["title"], MAX_TITLE_LENGTH),
        }
    for field in ("inputSchema", "outputSchema"):
        if isinstance(tool.get(field), Mapping):
            cleaned[field] = _clean_schema(tool[field], max_description_length)
    return cleaned


def injection_findings(text: str) -> list[str]:
    """Flag text that looks like instructions aimed at the model rather than a description.

    This is a heuristic with false negatives: paraphrases, other languages,
    look-alike letters from other scripts and instructions split across fields
    pass unflagged, so an empty list is no proof that a description is safe.
    The phrases are matched after hidden characters are removed and the text is
    NFKC-normalised and case-folded, so zero-width characters or full-width
    letters inside a phrase do not hide it.

    Returns:
        One short sentence per finding, quoting the matched text (case-folded);
        empty when nothing matched.
    """
    findings = _hidden_character_findings(text)
    folded = unicodedata.normalize("NFKC", _remove_hidden(text)).casefold()
    searchable = " ".join(folded.split())
    for pattern, sentence in _PHRASE_RULES:
        match = pattern.search(searchable)
        if match is not None:
            findings.append(f'{sentence}: "{_excerpt(match.group(0))}".')
    return findings


def definition_findings(tool: Mapping[str, Any]) -> list[str]:
    """Run `injection_findings` on every text of a tool definition meant for the model.

    Returns:
        Findings prefixed with where the text sits, such as
        `inputSchema.properties.path.description: ...`.
    """
    return [f"{path}: {finding}" for path, text in _texts(tool) for finding in injection_findings(text)]


# Hashing and diffs -------------------------------------------------------------------


def _pretty(tool: Mapping[str, Any]) -> str:
    return json.dumps(pinned_fields(tool), sort_keys=True, indent=2, ensure_ascii=False)


# Cleaning ----------------------------------------------------------------------------


def _remove_hidden(text: str) -> str:
    unified = _NEWLINES.sub("\n", text)
    return "".join(char for char in unified if not is_hidden_character(char))


def _clean_schema(schema: Mapping[str, Any], max_length: int) -> dict[str, Any]:
    cleaned = dict(schema)
    for keyword in _TEXT_KEYWORDS:
        if isinstance(schema.get(keyword), str):
            limit = MAX_TITLE_LENGTH if keyword == "title" else max_length
            cleaned[keyword] = clean_description(schema[keyword], limit)
    for keyword, value in schema.items():
        if keyword in _SCHEMA_KEYWORDS and isinstance(value, Mapping):
            cleaned[keyword] = _clean_schema(value, max_length)
        elif keyword in _SCHEMA_LIST_KEYWORDS and isinstance(value, list):
            cleaned[keyword] = [_clean_schema(v, max_length) if isinstance(v, Mapping) else v for v in value]
        elif keyword in _SCHEMA_MAP_KEYWORDS and isinstance(value, Mapping):
            cleaned[keyword] = {
                name: _clean_schema(v, max_length) if isinstance(v, Mapping) else v
                for name, v in value.items()
            }
    return cleaned


# Findings ----------------------------------------------------------------------------


def _texts(tool: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for field in ("title", "description"):
        if isinstance(tool.get(field), str):
            yield field, tool[field]
    annotations = tool.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
        yield "annotations.title", annotations["title"]
    for field in ("inputSchema", "outputSchema"):
        if isinstance(tool.get(field), Mapping):
            yield from _schema_texts(tool[field], field)


def _schema_texts(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    for keyword in _TEXT_KEYWORDS:
        if isinstance(schema.get(keyword), str):
            yield f"{path}.{keyword}", schema[keyword]
    for keyword, value in schema.items():
        if keyword in _SCHEMA_KEYWORDS and isinstance(value, Mapping):
            yield from _schema_texts(value, f"{path}.{keyword}")
        elif keyword in _SCHEMA_LIST_KEYWORDS and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _schema_texts(item, f"{path}.{keyword}[{index}]")
        elif keyword in _SCHEMA_MAP_KEYWORDS and isinstance(value, Mapping):
            for name, item in value.items():
                if isinstance(item, Mapping):
                    yield from _schema_texts(item, f"{path}.{keyword}.{name}")


def _hidden_character_findings(text: str) -> list[str]:
    counts: dict[str, int] = {}
    for char in text:
        # Cleaning turns these line breaks into "\n", so they hide nothing.
        if char in "\r\x85\u2028\u2029" or not is_hidden_character(char):
            continue
        kind = _hidden_kind(char)
        counts[kind] = counts.get(kind, 0) + 1
    return [f"Contains hidden characters: {kind} ({count} found)." for kind, count in counts.items()]


def _hidden_kind(char: str) -> str:
    code = ord(char)
    if 0xE0000 <= code <= 0xE007F:
        return "tag characters, which encode invisible ASCII"
    if char in _ZERO_WIDTH:
        return "zero-width characters"
    if char in _BIDI:
        return "bidirectional controls, which reorder the text shown"
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
        return "variation selectors"
    if unicodedata.category(char) == "Cc":
        return "control characters"
    return "invisible format characters"


def _excerpt(text: str) -> str:
    return text if len(text) <= MAX_EXCERPT_LENGTH else text[: MAX_EXCERPT_LENGTH - 3] + "..."


# Each rule is matched against case-folded text with single spaces. `[^.]{0,N}` lets a few
# words sit between the parts of a phrase but stops at the end of the sentence.
_PHRASE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"\b(ignore|disregard|forget|override)\b[^.]{0,40}\b(previous|prior|above|earlier|preceding"
            r"|all|other|system|original)\b[^.]{0,20}\b(instructions?|prompts?|rules|directions|guidelines)\b"
        ),
        "Tells the model to ignore its other instructions",
    ),
    (
        re.compile(r"\b(you are now|new instructions?|system prompt|developer mode)\b"),
        "Tries to change the model's role or instructions",
    ),
    (
        re.compile(
            r"\b(before|prior to|after)\s+(using|calling|invoking|running|executing)\s+(this|the|any)\b"
            r"[^.]{0,20}\btool"
        ),
        "Tells the model what to do around using the tool",
    ),
    (
        re.compile(
            r"\b(do not|don['\u2019]t|never|must not|should not)\s+(tell|inform|mention|reveal|show|notify|alert"
            r"|let)\b[^.]{0,20}\buser|\bwithout\s+(telling|informing|notifying|asking|alerting|showing)"
            r"\s+(the\s+)?user|\b(hide|conceal)\b[^.]{0,30}\bfrom\s+(the\s+)?user"
        ),
        "Asks the model to keep something from the user",
    ),
    (
        re.compile(
            r"<\s*/?\s*(important|system|instructions?|admin|secret|hidden|critical|assistant|prompt)\b"
            r"[^>]{0,40}>|\[/?(inst|system|important)\]|<\|[a-z_]{1,20}\|>"
        ),
        "Contains a tag that imitates prompt markup",
    ),
    (
        re.compile(
            r"~/\.ssh\b|\.ssh/|\bid_(rsa|dsa|ecdsa|ed25519)\b|(?<![\w.-])\.env\b"
            r"|/etc/(passwd|shadow|sudoers)\b|~/\.aws\b|\.aws/credentials|\.git-credentials"
            r"|(?<![\w.-])\.(netrc|npmrc|pypirc)\b"
            r"|\.kube/config|\.docker/config\.json|(?<![\w.-])mcp\.json\b|claude_desktop_config\.json"
            r"|\.(bash|zsh)_history\b|\bprivate key\b"
        ),
        "Refers to a secret or a credential file",
    ),
    (
        re.compile(
            r"\b(send|forward|transmit|leak|exfiltrate)\b[^.]{0,60}\b(to|via)\s+"
            r"(https?://|ftp://|[\w.+-]+@[\w-]+\.)"
        ),
        "Asks the model to send data to an outside address",
    ),
)
