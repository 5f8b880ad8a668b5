"""Build a small sandbox image for the `docker` backend from this machine's own Python, offline.

The image contains the host's python3 with its standard library, /bin/sh, and the
shared libraries both need (found with `ldd`), and nothing else: no package
manager, no /etc/shadow, no users. It is written as a tar of a root file system
and imported with `podman import` (or `docker import`), so no registry is needed.

    python3 tests/sandbox/docker/build_image.py --tool podman --tag mcp-guard-sandbox:latest

Run it with the Python that should go into the image (normally /usr/bin/python3),
as the user whose container storage the gateway uses (root for rootful Podman).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# Parts of the standard library that sandboxed code does not need, left out to keep the image small.
STDLIB_EXCLUDED = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
}
# The root file system's merged-/usr links, as Debian 12 has them.
ROOT_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
LDD_PATH = re.compile(r"(/\S+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", default="podman", help="program that imports the tar (podman or docker)")
    parser.add_argument("--tag", default="mcp-guard-sandbox:latest", help="name:tag of the image")
    parser.add_argument("--tar", type=Path, help="only write the root file system to this tar file")
    args = parser.parse_args()

    if args.tar is not None:
        write_rootfs(args.tar)
        return
    with tempfile.TemporaryDirectory(prefix="mcp-guard-image-") as folder:
        tar = Path(folder) / "rootfs.tar"
        write_rootfs(tar)
        import_image(args.tool, tar, args.tag)


def import_image(tool: str, tar: Path, tag: str) -> None:
    """Import `tar` as image `tag`, running as user 65534 in /workspace by default."""
    subprocess.run(
        [
            tool,
            "import",
            "--change",
            "USER 65534:65534",
            "--change",
            "WORKDIR /workspace",
            "--change",
            'CMD ["/usr/bin/python3"]',
            str(tar),
            tag,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def write_rootfs(tar_path: Path) -> None:
    """Write the image's root file system (Python, sh and their libraries) to `tar_path`."""
    python = Path(os.path.realpath(sys.executable))
    shell = Path(os.path.realpath("/bin/sh"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = stdlib / "lib-dynload"
    libraries = shared_libraries([python, shell, *dynload.glob("*.so")])

    with tarfile.open(tar_path, "w") as tar:
        # Podman gives a tmpfs mount the mode of the image's folder under it, whatever mode the
        # container requests, so /workspace must be writable by the sandbox user already here.
        for name in ("workspace", "tmp", "proc", "dev", "sys", "etc", "usr/bin"):
            add_folder(tar, name, mode=0o1777 if name in ("workspace", "tmp") else 0o755)
        for name, target in ROOT_LINKS.items():
            add_link(tar, name, target)
        tar.add(python, arcname=relative(python))
        add_link(tar, "usr/bin/python3", python.name)
        tar.add(shell, arcname=relative(shell))
        if relative(shell) != "usr/bin/sh":
            add_link(tar, "usr/bin/sh", shell.name)
        tar.add(stdlib, arcname=relative(stdlib), filter=skip_unneeded)
        for library in sorted(libraries):
            add_library(tar, library)


def shared_libraries(programs: Iterable[Path]) -> set[Path]:
    """Return every library `ldd` lists for `programs`, as the paths the loader looks them up by."""
    found: set[Path] = set()
    for program in programs:
        result = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            match = LDD_PATH.search(line.partition("=>")[2] or line)
            if match:
                found.add(Path(match.group(1)))
    return found


def add_library(tar: tarfile.TarFile, path: Path) -> None:
    """Add a library under /usr (the loader finds /lib paths through the merged-/usr links)."""
    real = Path(os.path.realpath(path))
    for link in symlink_chain(path):
        if link != real:
            add_link(tar, relative(link), os.readlink(link))
    tar.add(real, arcname=relative(real))


def symlink_chain(path: Path) -> Iterator[Path]:
    """Yield `path` and every link it passes through, each under /usr."""
    current = under_usr(path)
    while current.is_symlink():
        yield current
        current = under_usr(current.parent / os.readlink(current))
    yield current


def under_usr(path: Path) -> Path:
    return path if str(path).startswith("/usr/") else Path("/usr") / path.relative_to("/")


def relative(path: Path) -> str:
    """Return the path inside the image: under usr/, because the image's /lib and /bin link there."""
    text = str(path).lstrip("/")
    return text if text.startswith("usr/") else f"usr/{text}"


def add_folder(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def skip_unneeded(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if len(parts) > 3 and parts[3] in STDLIB_EXCLUDED:
        return None
    if parts[-1].startswith("config-3"):
        return None
    return info


if __name__ == "__main__":
    main()
