"""The paths of init's outputs: the policy, the client configuration and the gateway's state folder.

By default the policy goes to the user's configuration folder (`$XDG_CONFIG_HOME/mcp-guard/`),
named for the client and, for a per-project source, for the project folder. The client
configuration, which contains the credentials, goes beside it. Each policy gets a state folder
of its own under `$XDG_STATE_HOME/mcp-guard/`, since only one gateway may write an audit trail.
So nothing secret lands in a project folder unless `--output` puts it there. `exposures` finds
the outputs that an imported server or a git work tree could still reach. Writing the files is
left to `command.py`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp_guard.errors import SetupError
from mcp_guard.locations import APP_FOLDER, client_config_beside, config_home, folders_given, state_home
from mcp_guard.setup.importing import ImportResult
from mcp_guard.setup.render import PROJECT_LINE, comment_text
from mcp_guard.setup.sources import ClientFile

POLICY_SUFFIX = ".toml"
# Characters of a project folder's name that a default policy file name keeps; others become "-".
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
# Hex digits of the policy path's SHA-256 in the state folder of a policy outside the
# configuration folder, where two policies may share a file name.
STATE_HASH_LENGTH = 8
# How many lines of an existing policy are searched for the project line of its header.
HEADER_LINES = 10


@dataclass(frozen=True)
class Outputs:
    """The files init writes, and the state folder the written policy names."""

    policy: Path
    client_config: Path
    state_dir: Path
    default: bool
    """Whether the policy path is init's default rather than `--output`."""


@dataclass(frozen=True)
class Exposure:
    """An output that an imported server is given, or that lies in a git work tree."""

    label: str
    """The output: "policy", "client configuration" or "state directory"."""
    path: Path
    folder: Path
    """The folder the server is given, or the root of the git work tree."""
    server: str | None
    """The name of the server in the client configuration, or None for a git work tree."""

    def message(self) -> str:
        """Return the warning, naming the output, the folder, the server and the fix."""
        contents = _CONTENTS[self.label]
        if self.server is None:
            return (
                f"the {self.label} {self.path} is inside the git work tree {self.folder}. It {contents}, so "
                f"do not commit it: list it in .gitignore, or {_move_hint(self.label, self.folder)}"
            )
        return (
            f"the {self.label} {self.path} is inside {self.folder}, a folder that server {self.server!r} "
            "is given. The gateway refuses calls that name it, but a tool that searches or lists that "
            f"folder can still reach it. It {contents}; {_move_hint(self.label, self.folder)}"
        )


_CONTENTS = {
    "policy": "names your servers and the rules that guard them",
    "client configuration": "carries any credentials your client configuration gave its servers",
    "state directory": "will contain the audit key and trail, the pins and the approvals",
}


def plan_outputs(output: str | None, client: ClientFile, environ: Mapping[str, str] | None = None) -> Outputs:
    """Return where init writes for `client`: `output`, else the default path.

    Raises:
        SetupError: The policy path is a folder, or an output would replace the client's own file.
    """
    env = os.environ if environ is None else environ
    config_folder = config_home(env) / APP_FOLDER
    default = config_folder / default_policy_name(client)
    policy = default if output is None else Path(output).expanduser().absolute()
    if policy.is_dir():
        raise SetupError(str(policy), ["--output names a folder; name the policy file to write"])
    client_config = client_config_beside(policy)
    if client.path in (policy, client_config):
        raise SetupError(
            str(policy), ["init never writes over the client's own file; choose another --output"]
        )
    return Outputs(
        policy=policy,
        client_config=client_config,
        state_dir=state_folder(policy, config_folder, env),
        default=output is None,
    )


def default_policy_name(client: ClientFile) -> str:
    """Return the default policy file name: the client, then the project folder's name if any."""
    name: str = client.kind
    if client.project is not None:
        project = UNSAFE_NAME_CHARACTERS.sub("-", client.project.name).strip("-.")
        if project:
            name = f"{name}-{project}"
    return name + POLICY_SUFFIX


def state_folder(policy: Path, config_folder: Path, environ: Mapping[str, str]) -> Path:
    """Return the state folder of `policy`: its stem, plus a hash of its path outside `config_folder`."""
    name = policy.stem
    if policy.parent != config_folder:
        digest = hashlib.sha256(str(policy).encode("utf-8", "surrogateescape")).hexdigest()
        name = f"{name}-{digest[:STATE_HASH_LENGTH]}"
    return state_home(environ) / APP_FOLDER / name


def check_existing(outputs: Outputs, client: ClientFile, *, force: bool) -> None:
    """Stop unless the outputs may be written: new, or replaced with `force`.

    A default policy written for another project folder of the same name is never replaced,
    even with `force`, since that would take the other project's policy away.

    Raises:
        SetupError: An output exists and `force` is false, or the default policy belongs to
            another project folder.
    """
    if outputs.default and client.project is not None:
        other = _project_of_policy(outputs.policy)
        if other is not None and other != comment_text(str(client.project)):
            raise SetupError(
                str(outputs.policy),
                [
                    f"this policy was written for the project folder {other}, which has the same name "
                    f"as {client.project}; name another policy file with --output FILE"
                ],
            )
    if force:
        return
    existing = [path for path in (outputs.policy, outputs.client_config) if path.exists()]
    if existing:
        raise SetupError(
            str(existing[0]),
            [
                f"{path} already exists; pass --force to replace it, or --output to write elsewhere"
                for path in existing
            ],
        )


def exposures(outputs: Outputs, imported: ImportResult) -> list[Exposure]:
    """Return each output that an imported server is given, or that lies in a git work tree."""
    labelled = [
        ("policy", outputs.policy),
        ("client configuration", outputs.client_config),
        ("state directory", outputs.state_dir),
    ]
    start = imported.client.project or Path.cwd()
    found: list[Exposure] = []
    for server in imported.servers:
        if server.kind != "stdio":
            continue
        for folder in folders_given(server.table, start, outputs.policy.parent):
            found += [
                Exposure(label, path, folder, server.name)
                for label, path in labelled
                if _is_inside(path, folder)
            ]
    for label, path in labelled:
        root = git_work_tree(path)
        if root is not None:
            found.append(Exposure(label, path, root, None))
    return _unique(found)


def git_work_tree(path: Path) -> Path | None:
    """Return the root of the git work tree that contains `path`, found by its `.git` entry."""
    for folder in path.resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def _project_of_policy(policy: Path) -> str | None:
    """Return the project folder named in an existing policy's header, or None without one."""
    try:
        with policy.open(encoding="utf-8") as file:
            lines = [file.readline() for _ in range(HEADER_LINES)]
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if line.startswith(PROJECT_LINE):
            return line.removeprefix(PROJECT_LINE).rstrip("\n")
    return None


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


def _move_hint(label: str, folder: Path) -> str:
    if label == "state directory":
        return f"set gateway.state_dir in the policy to a folder outside {folder}"
    return f"run init again with --output FILE outside {folder}"


def _unique(exposures: list[Exposure]) -> list[Exposure]:
    """Keep the first exposure found for each output and server."""
    seen: set[tuple[str, str | None]] = set()
    kept: list[Exposure] = []
    for exposure in exposures:
        key = (exposure.label, exposure.server)
        if key not in seen:
            seen.add(key)
            kept.append(exposure)
    return kept
