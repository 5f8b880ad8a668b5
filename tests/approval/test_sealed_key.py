"""The approval key file: written as hex text, and read in that form or as 32 raw bytes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mcp_guard.approval.sealed import ApprovalKeyError, load_or_create_key


def test_new_key_written_as_hex(tmp_path: Path) -> None:
    path = tmp_path / "state" / "approval.key"

    key = load_or_create_key(path)
    again = load_or_create_key(path)

    assert path.read_text(encoding="ascii") == key.hex() + "\n"
    assert again == key
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_raw_key_of_earlier_versions_read(tmp_path: Path) -> None:
    path = tmp_path / "approval.key"
    path.write_bytes(bytes(range(32)))

    assert load_or_create_key(path) == bytes(range(32))


@pytest.mark.parametrize("stored", [b"short", b"ab" * 31 + b"\n", b"zz" * 32, bytes(range(31))])
def test_damaged_key_rejected(tmp_path: Path, stored: bytes) -> None:
    path = tmp_path / "approval.key"
    path.write_bytes(stored)

    with pytest.raises(ApprovalKeyError) as error:
        load_or_create_key(path)

    assert "expected 64 hex digits or 32 bytes" in str(error.value)
