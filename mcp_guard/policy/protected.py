"""Reject calls whose arguments name a protected file, whatever the rules allow.

mcp-guard's own files decide what an agent may do. The state directory contains the audit trail
and its key, the pins, the approvals and the rate-limit counts. The policy file contains the
rules, and the client settings start the gateway and carry the servers' credentials. A tool that could read
or change one of them would let an agent read those credentials, erase or forge its record,
approve its own calls, or remove the gateway from its client's settings before the next start.
So every string in a call's arguments (keys included) that a server could take as a file path is
resolved as `path_under` resolves paths, and a call that names a protected place is denied.

A string is checked in each form a server might turn it into: as sent, with surrounding white
space removed, percent-decoded, with a leading `~` expanded, and as the path of a `file:` URI. A
relative form is checked from each folder the server might take it from.

NOTE: a tool that walks folders (a recursive search from the home folder, say) can still reach a
protected place without naming it. Keep these places out of the folders servers are given;
`mcp-guard init` writes mcp-guard's files outside project folders for this reason.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from mcp_guard.policy.paths import MAX_PATH_CHARS, PathResolver, default_resolver

# Maximum number of strings resolved against the filesystem in one call. Each costs a few system
# calls, so a call that sends more is rejected rather than checked in part.
MAX_RESOLVED_STRINGS = 1_000
# Maximum rounds of percent-decoding, since a server may decode twice.
DECODE_ROUNDS = 2
# Folders named in one call's arguments that its relative paths are also taken from. A server
# may join a folder from one argument with a name from another.
MAX_ARGUMENT_FOLDERS = 8
# Folders from arguments whose protected names are remembered between calls.
MAX_CACHED_ARGUMENT_FOLDERS = 256
# A string that every form leaves as it is: no separator, `~`, percent sign, colon or surrounding
# white space. It names at most a file in the working folder.
_PLAIN_NAME = re.compile(r"[^/~%:\s\x00](?:[^/~%:\x00]*[^/~%:\s\x00])?")
# macOS and Windows compare file names without regard to case by default.
CASE_BLIND = sys.platform in ("darwin", "win32")


@dataclass(frozen=True)
class ProtectedPlace:
    """A file or folder no tool call may name.

    Attributes:
        path: Absolute path, as configured.
        description: What it is, completing "names ...": "mcp-guard's state directory".
        folder: Whether everything below `path` is protected too.
        own: Whether it is one of mcp-guard's own folders, which `init` or the gateway may create
            after `check` looked.
    """

    path: str
    description: str
    folder: bool
    own: bool = False


@dataclass(frozen=True)
class _Resolved:
    path: str
    place: ProtectedPlace


class ProtectedPaths:
    """Finds the arguments of a call that name a protected place."""

    def __init__(self, places: Iterable[ProtectedPlace], resolve: PathResolver = default_resolver) -> None:
        self._resolve = resolve
        resolved: list[_Resolved] = []
        for place in places:
            # Both forms: a place that does not exist yet has no links to follow, and one whose
            # folder is a link is found by its target.
            for form in {os.path.abspath(place.path), resolve(os.path.abspath(place.path))}:
                resolved.append(_Resolved(_fold(form), place))
        self._places = tuple(resolved)
        self._bases: dict[tuple[str, ...], tuple[_Base, ...]] = {}
        self._argument_bases: dict[str, _Base] = {}

    @property
    def places(self) -> tuple[ProtectedPlace, ...]:
        """The protected places, each once."""
        return tuple(dict.fromkeys(entry.place for entry in self._places))

    def problem(self, arguments: Mapping[str, Any], bases: Sequence[str]) -> str | None:
        """Return why the call must be rejected, a sentence for the caller, or None.

        Args:
            arguments: The call's arguments.
            bases: Absolute folders a server may take a relative path from: its working folder,
                the folders it is given, the home folder. A relative path is checked against each,
                and a relative value also against each existing folder another value names.
        """
        key = tuple(bases)
        resolved_bases = self._bases.get(key)
        if resolved_bases is None:
            resolved = dict.fromkeys(self._resolve(os.path.abspath(base)) for base in bases)
            resolved_bases = self._bases[key] = tuple(self._base(base) for base in resolved)
        budget = _Budget(MAX_RESOLVED_STRINGS)
        strings = list(_strings(arguments))
        # A server may join a folder from one argument with a name from another, so a value is also
        # taken from each folder the other values name. Keys are names, not paths to join.
        value_bases = resolved_bases
        if len(strings) > 1:
            value_bases += self._argument_folders(strings, resolved_bases)
        seen: set[tuple[str, bool]] = set()
        for where, value in strings:
            is_key = where[1]
            if (value, is_key) in seen:
                continue
            seen.add((value, is_key))
            place = self._named(value, resolved_bases if is_key else value_bases, budget)
            if place is not None:
                return (
                    f"{_describe(where)} names {place.description}, which mcp-guard lets no tool call reach "
                    "(it reads every string in the arguments as a possible path). A person can read or "
                    "change it outside the agent"
                )
            if budget.spent:
                return (
                    f"the arguments hold more than {MAX_RESOLVED_STRINGS:,} values that could be file paths, "
                    "more than mcp-guard checks in one call; send fewer in each call"
                )
        return None

    def _argument_folders(
        self, strings: Sequence[tuple[_Where, str]], known: Sequence[_Base]
    ) -> tuple[_Base, ...]:
        """Return the existing folders that absolute strings among the arguments name, as bases.

        A folder that is itself protected is left out: the string that names it is rejected anyway.
        """
        # Each candidate costs a stat, so no more are examined than the main check resolves.
        budget = _Budget(MAX_RESOLVED_STRINGS)
        folders: dict[str, None] = {}
        known_paths = {base.path for base in known}
        for _, value in strings:
            if len(folders) == MAX_ARGUMENT_FOLDERS:
                break
            head = value.lstrip()[:5].lower()
            if not head.startswith(("/", "~", "%")) and head != "file:":
                continue
            for form in _forms(value):
                if form.startswith("/") and budget.take() and os.path.isdir(form):
                    try:
                        folder = self._resolve(form)
                    except (OSError, ValueError):
                        continue
                    if folder not in known_paths and self._place_of(folder) is None:
                        folders.setdefault(folder)
                    break
        return tuple(self._argument_base(folder) for folder in folders)

    def _argument_base(self, path: str) -> _Base:
        base = self._argument_bases.get(path)
        if base is None:
            if len(self._argument_bases) >= MAX_CACHED_ARGUMENT_FOLDERS:
                self._argument_bases.clear()
            base = self._argument_bases[path] = self._base(path)
        return base

    def _base(self, path: str) -> _Base:
        inside = self._place_of(path)
        folded = _fold(path)
        names = {
            os.path.basename(entry.path): entry.place
            for entry in self._places
            if os.path.dirname(entry.path) == folded
        }
        return _Base(path, inside if inside is not None and inside.folder else None, names)

    def _named(self, value: str, bases: Sequence[_Base], budget: _Budget) -> ProtectedPlace | None:
        """Return the protected place `value` names as a path, taken from each of `bases` when relative, or None."""
        if _PLAIN_NAME.fullmatch(value) and value not in (".", ".."):
            # The common case, text that is at most a file name, costs one lstat per base.
            return self._name_in(value, bases, budget)
        for form in _forms(value):
            if form.startswith("/"):
                place = self._path_named(form, budget)
            elif "/" not in form and form not in (".", ".."):
                place = self._name_in(form, bases, budget)
            else:
                place = next(
                    (found for base in bases if (found := self._path_named(f"{base.path}/{form}", budget))),
                    None,
                )
            if place is not None:
                return place
        return None

    def _name_in(self, name: str, bases: Sequence[_Base], budget: _Budget) -> ProtectedPlace | None:
        """Return the protected place that the file `name` in one of `bases` is, or is a link into."""
        folded = _fold(name)
        for base in bases:
            place = base.inside or base.names.get(folded)
            if place is None:
                absolute = f"{base.path}/{name}"
                if os.path.islink(absolute):
                    place = self._path_named(absolute, budget)
            if place is not None:
                return place
        return None

    def _path_named(self, absolute: str, budget: _Budget) -> ProtectedPlace | None:
        """Return the protected place an absolute path names once resolved, or None."""
        if not budget.take():
            return None
        try:
            resolved = self._resolve(absolute)
        except (OSError, ValueError):
            # No file can have this name (a lone surrogate, say), so the server cannot open one.
            return None
        return self._place_of(resolved) or self._place_of(os.path.normpath(absolute))

    def _place_of(self, path: str) -> ProtectedPlace | None:
        path = _fold(path)
        for entry in self._places:
            if path == entry.path or (entry.place.folder and path.startswith(entry.path.rstrip("/") + "/")):
                return entry.place
        return None


class FolderWatch:
    """The folders on the way to each protected place, as they were when the gateway started.

    Renaming such a folder takes the files inside out of the path check's sight: an agent could
    rename `~/.claude`, write the `settings.json` in it under the new name, and rename it back.
    So the gateway compares these folders' identities before each call.

    Args:
        places: The protected places.
        stop_at: Folders where the walk up from a place ends, unwatched: the home folder.
    """

    def __init__(self, places: Iterable[ProtectedPlace], stop_at: Iterable[str]) -> None:
        stops = {os.path.abspath(folder) for folder in stop_at}
        self._folders: dict[str, tuple[int, int]] = {}
        for place in places:
            folder = os.path.abspath(place.path)
            if not place.folder:
                folder = os.path.dirname(folder)
            while folder not in stops and folder not in self._folders and folder != os.path.dirname(folder):
                identity = _folder_identity(folder)
                if identity is not None:
                    self._folders[folder] = identity
                folder = os.path.dirname(folder)

    @property
    def folders(self) -> tuple[str, ...]:
        """The watched folders."""
        return tuple(self._folders)

    def changed(self) -> str | None:
        """Return a watched folder that is missing or is another folder now, or None."""
        for folder, identity in self._folders.items():
            if _folder_identity(folder) != identity:
                return folder
        return None


def missing_folders(places: Iterable[ProtectedPlace]) -> list[ProtectedPlace]:
    """Return the folders on the way to each place that do not exist, as places of their own.

    `FolderWatch` notices an existing folder that is replaced, but a missing one has nothing to
    compare: an agent could write `settings.json` into a folder of its own and rename that folder
    to `~/.gemini`. The rename names the missing folder, so a call that names it is refused. Only
    the folder itself is protected, not what it may later hold besides the places.
    """
    found: dict[str, ProtectedPlace] = {}
    for place in places:
        folder = os.path.dirname(os.path.abspath(place.path))
        while folder not in found and folder != os.path.dirname(folder) and not os.path.lexists(folder):
            found[folder] = ProtectedPlace(folder, f"a folder for {place.description}", folder=False)
            folder = os.path.dirname(folder)
    return list(found.values())


def _folder_identity(folder: str) -> tuple[int, int] | None:
    """Return the device and inode of `folder`, or None when it is not a folder."""
    try:
        info = os.stat(folder)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


@dataclass(frozen=True)
class _Base:
    """A folder relative paths are taken from, with what the protected places are to it.

    Attributes:
        path: The folder, resolved.
        inside: The protected folder it lies in, if any: every name in it is protected then.
        names: The protected places directly in it, by their folded names.
    """

    path: str
    inside: ProtectedPlace | None
    names: Mapping[str, ProtectedPlace]


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit
        self.spent = False

    def take(self) -> bool:
        if self.left == 0:
            self.spent = True
            return False
        self.left -= 1
        return True


def _fold(path: str) -> str:
    """Return the form in which two names of one file compare equal.

    Servers and filesystems may match names in either Unicode normal form (macOS does, and so does
    the published filesystem server), and macOS and Windows ignore case by default.
    """
    if not path.isascii():
        path = unicodedata.normalize("NFC", path)
    return path.casefold() if CASE_BLIND else path


def _forms(value: str) -> Iterator[str]:
    """Yield each path a server could make of `value`, each once."""
    forms: dict[str, None] = {}
    # Some servers drop white space around a path. A relative name followed by a line break is
    # more likely a file's content (".mcp.json" in a .gitignore), so it is checked only as it is.
    stripped = value.strip()
    if any(mark in value for mark in "\r\n") and (
        any(mark in stripped for mark in "\r\n")
        or not (stripped.startswith(("/", "~")) or stripped[:5].lower() == "file:")
    ):
        stripped = value
    pending = [value, stripped]
    decoded = stripped
    for _ in range(DECODE_ROUNDS):
        if "%" not in decoded:
            break
        decoded = unquote(decoded)
        pending.append(decoded)
    for form in pending:
        candidates = [form]
        if form[:5].lower() == "file:":
            candidates.append(unquote(urlsplit(form).path))
        if form.startswith("~"):
            candidates.append(os.path.expanduser(form))
        for candidate in candidates:
            if len(candidate) > MAX_PATH_CHARS:
                # Too long for the kernel, unless a server shortens it first ("a/../" repeated).
                candidate = os.path.normpath(candidate)
            if candidate and len(candidate) <= MAX_PATH_CHARS and "\0" not in candidate:
                forms.setdefault(candidate)
    yield from forms


# Position of a string in the arguments: the keys and indexes leading to it, and whether the
# string is the last key itself rather than its value.
_Where = tuple[tuple[str | int, ...], bool]
# Maximum characters of a key shown in a rejection.
MAX_SHOWN_KEY_CHARS = 60


def _strings(value: Any) -> Iterator[tuple[_Where, str]]:
    """Yield where each string in `value` sits and the string, keys included."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        parts, item = stack.pop()
        if isinstance(item, str):
            yield (parts, False), item
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str):
                    yield ((*parts, key), True), key
                stack.append(((*parts, key), child))
        elif isinstance(item, list | tuple):
            stack.extend(((*parts, index), child) for index, child in enumerate(item))


def _describe(where: _Where) -> str:
    parts, is_key = where
    location = "".join(
        f"[{part}]" if isinstance(part, int) else f"[{part[:MAX_SHOWN_KEY_CHARS]!r}]" for part in parts
    )
    return f"the key arguments{location}" if is_key else f"arguments{location}"
