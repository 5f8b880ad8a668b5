"""The built-in secret detectors: key names that mark a secret, and value patterns.

`redaction.Redactor` combines these with the operator's extra keys and patterns.
This module only defines them; it does no redaction itself.

Every pattern here runs in time linear in the length of the text. A pattern that
ends in an unbounded run either starts with a fixed prefix that cannot occur
inside that run, or carries a look-behind that lets a match start only at the
beginning of a run. Without that, a long run of matching characters would be
rescanned from every position (quadratic time). Bounded repeats cost a constant
per position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARKER_FORMAT = "[REDACTED:{name}]"
MARKER_PREFIX = "[REDACTED:"


def marker(name: str) -> str:
    """Return the text that replaces a secret found by the detector `name`."""
    return MARKER_FORMAT.format(name=name)


# A key is split into words ("apiKey" -> api, key; "X-Auth-Token" -> x, auth, token) and
# matches when its last words, joined, are one of these names. So "access_token" and
# "GITHUB_TOKEN" match while "max_tokens" and "token_count" do not. The bare "session"
# is left out on purpose: the gateway logs and stores session ids under that key.
SECRET_KEY_NAMES: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "apitoken",
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "authtoken",
        "bearertoken",
        "sessiontoken",
        "csrftoken",
        "xsrftoken",
        "accesskey",
        "secretkey",
        "privatekey",
        "signingkey",
        "encryptionkey",
        "masterkey",
        "sessionkey",
        "clientsecret",
        "authorization",
        "auth",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "jwt",
        "sessioncookie",
        "connectionstring",
    }
)
# Keys that contain one of these words anywhere are secret too ("password_hash", "newPassword1").
SECRET_KEY_WORDS: frozenset[str] = frozenset({"password", "passwd", "passphrase"})

_KEY_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def key_words(key: str) -> list[str]:
    """Split a key into lower-case words at case changes, digits and punctuation."""
    return [word.lower() for word in _KEY_WORD.findall(key)]


def normalize_key_name(key: str) -> str:
    """Return a key name as `SECRET_KEY_NAMES` spells it: lower case, words joined."""
    return "".join(key_words(key))


@dataclass(frozen=True, slots=True)
class ValuePattern:
    """A regex that finds one kind of secret in free text.

    Attributes:
        name: Detector name shown in the replacement marker.
        regex: The compiled pattern. If it has a group named `secret`, only that group is
            replaced and the rest of the match is kept.
        trigger: A regex that finds part of every match of `regex`, so text where it finds
            nothing is not scanned with `regex`. None: always scan.
    """

    name: str
    regex: re.Pattern[str]
    trigger: str | None = None

    def replace(self, text: str) -> str:
        """Return `text` with every match of this pattern masked."""
        return self.regex.sub(self._replacement, text)

    def _replacement(self, match: re.Match[str]) -> str:
        if "secret" not in self.regex.groupindex:
            return marker(self.name) if match.group(0) else ""
        whole = match.group(0)
        start, end = match.span("secret")
        if start == end:
            return whole
        offset = match.start()
        return whole[: start - offset] + marker(self.name) + whole[end - offset :]


BUILTIN_PATTERNS: tuple[ValuePattern, ...] = (
    ValuePattern(
        "url-password",
        # Starts only at "://", and both runs stop at "/", so scans never overlap. The
        # password run is greedy to the last "@" so a raw "@" in a password is masked too.
        re.compile(r"://(?P<user>[^\s:/?#@\[\]]*):(?P<secret>[^\s/?#]+)@"),
        trigger="://",
    ),
    ValuePattern("aws-access-key-id", re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}"), trigger="AKIA|ASIA"),
    ValuePattern("github-token", re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"), trigger="gh[pousr]_"),
    ValuePattern(
        "github-token", re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{20,}"), trigger="github_pat_"
    ),
    ValuePattern(
        "slack-token", re.compile(r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{8,}"), trigger="xox[abposr]-"
    ),
    ValuePattern(
        "jwt",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
        trigger="eyJ",
    ),
    ValuePattern("api-key", re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"), trigger="sk-"),
    ValuePattern(
        "stripe-key",
        re.compile(r"(?<![A-Za-z0-9_])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
        trigger="k_(?:live|test)_",
    ),
    ValuePattern("google-api-key", re.compile(r"AIza[0-9A-Za-z_-]{35}"), trigger="AIza"),
    ValuePattern(
        "authorization-header",
        re.compile(r"(?i)(?<![A-Za-z0-9])(?:bearer|basic)[ \t]+(?P<secret>[A-Za-z0-9._~+/=-]{6,})"),
        trigger="(?i:bearer|basic)",
    ),
)


def combined_trigger(value_patterns: Sequence[ValuePattern]) -> re.Pattern[str] | None:
    """Return one regex that finds the trigger of any of `value_patterns`, or None if one has none.

    A text where it finds nothing contains no match of any of the patterns, so none of them
    needs to run: one scan instead of one per pattern.
    """
    triggers = [pattern.trigger for pattern in value_patterns]
    if not triggers or None in triggers:
        return None
    return re.compile("|".join(f"(?:{trigger})" for trigger in triggers))


_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")


def mask_private_key_blocks(text: str) -> str:
    """Mask PEM private key blocks, including a block cut off before its END line.

    Each BEGIN line is found once and the search for its END line resumes after it,
    so the scan is linear where a lazy `.*?` regex would rescan the rest of the text
    for every BEGIN line.
    """
    parts: list[str] = []
    position = 0
    while (begin := _PEM_BEGIN.search(text, position)) is not None:
        parts.append(text[position : begin.start()])
        parts.append(marker("private-key"))
        end = _PEM_END.search(text, begin.end())
        if end is None:
            return "".join(parts)
        position = end.end()
    parts.append(text[position:])
    return "".join(parts)


# `key=value`, `key: value`, `"key": "value"` and `\"key\": \"value\"` (JSON inside a JSON
# string). A ":" before "//" starts a URL, not a value. The key is a maximal run of name
# characters (the look-behind stops a match from starting inside one), so every run is
# scanned from one start only. A quoted value runs to the closing quote or the end of
# the line, so a long quoted secret is masked whole.
ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>[A-Za-z0-9_.\-]+)"
    r"(?P<separator>\\?[\"']?[ \t]*[:=](?!//)[ \t]*)"
    r"(?P<value>\\?\"[^\"\n]*|\\?'[^'\n]*|[^\s\"'&;,=]+)"
)
# `--password hunter2` and `-token abc` on a command line.
COMMAND_LINE_OPTION = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>--?[A-Za-z][A-Za-z0-9_.\-]*)"
    r"(?P<separator>[ \t]+)"
    r"(?P<value>\"[^\"\n]*|'[^'\n]*|[^\s\"'\-][^\s\"']*)"
)
# Each scan for `key=value`-like text, with the characters one of which every match contains.
ASSIGNMENT_SCANS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (ASSIGNMENT, (":", "=")),
    (COMMAND_LINE_OPTION, ("-",)),
)
# Values after a secret-looking key that are kept: the scheme word of an Authorization
# header, whose credential the header pattern has already masked.
KEPT_ASSIGNMENT_VALUES: frozenset[str] = frozenset({"bearer", "basic"})


def mask_assignments(
    text: str,
    is_secret_key: Callable[[str], bool],
    scans: Sequence[tuple[re.Pattern[str], tuple[str, ...]]] = ASSIGNMENT_SCANS,
) -> str:
    """Mask the value in each `key=value`-like match whose key `is_secret_key` accepts.

    A scan is skipped when the text contains none of its characters, as it cannot match.
    """

    def replace(match: re.Match[str]) -> str:
        value = match.group("value")
        content = value.lstrip("\\\"'")
        opening = value[: len(value) - len(content)]
        if not content or content.startswith(MARKER_PREFIX) or content.lower() in KEPT_ASSIGNMENT_VALUES:
            return match.group(0)
        if not is_secret_key(match.group("key")):
            return match.group(0)
        return match.group("key") + match.group("separator") + opening + marker("secret-field")

    for regex, marks in scans:
        if any(mark in text for mark in marks):
            text = regex.sub(replace, text)
    return text
