"""Sealed `requestState` for approval questions asked through a 2026-07-28 input-required result.

A client that speaks 2026-07-28 is asked to approve a call in the result of
the call itself (multi-round-trip requests, MRTR). It retries the same call
with the person's answer and echoes the `requestState` of the question. That
state is attacker-controlled, so it is sealed here with AES-256-GCM under a
key of the state directory. The sealed claims bind the whole `CallBinding`
(client, session, tool, argument digest, pinned definition, policy), a short
expiry and a random nonce. `StateSealer.open` rejects any state it did not
seal unmodified, an expired one and one minted for another call.

Sealing cannot make a state single-use. The approval store records each
nonce as used, which is what rejects a replay.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_guard.approval.store import CallBinding
from mcp_guard.errors import GuardError

KEY_FILE = "approval.key"
KEY_BYTES = 32
# Random bytes of each question's nonce, the id that the approval store marks as answered.
NONCE_BYTES = 16
# AES-GCM's standard 96-bit IV, drawn at random for each seal.
_IV_BYTES = 12
_TAG_BYTES = 16
# The format version. It is also bound as associated data, so a token cannot pass as another format.
_PREFIX = "mg1."
_ASSOCIATED_DATA = b"mcp-guard/approval-request-state/v1"
# Longer input is rejected before it is decoded. A sealed state is about 700 characters plus the
# length of the client, server, tool and rule names, so real states stay far below this.
MAX_TOKEN_CHARS = 65_536


class InvalidRequestState(GuardError):
    """A `requestState` was not sealed by this gateway for this call, or it has expired.

    `reason` names the failed check for the log. It never contains the state or the key.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"The request state is invalid ({reason}); the call must be approved again.")


class ApprovalKeyError(GuardError):
    """The key that seals approval request states cannot be read or created."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"The approval key file {str(path)!r} cannot be used ({reason}). Check that the state "
            f"directory is writable by the gateway's user, or delete a damaged key file."
        )


@dataclass(frozen=True)
class StateClaims:
    """The claims of a sealed state: the call it was issued for, its expiry and its nonce."""

    binding: CallBinding
    expires: float
    """Unix time after which the state is rejected."""
    nonce: str


class StateSealer:
    """Seals and opens approval request states with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an approval key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "StateSealer(key=<hidden>)"

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> StateSealer:
        """Build a sealer on the key file of a state directory, creating the key if it is missing.

        Raises:
            ApprovalKeyError: The key file cannot be read or created, or is not 32 bytes long.
        """
        return cls(load_or_create_key(state_dir / KEY_FILE))

    def seal(self, binding: CallBinding, *, expires: float) -> tuple[str, StateClaims]:
        """Return a new sealed state for `binding`, valid until `expires`, and the claims it carries."""
        claims = StateClaims(binding=binding, expires=expires, nonce=secrets.token_urlsafe(NONCE_BYTES))
        payload = json.dumps(
            {"binding": asdict(binding), "expires": expires, "nonce": claims.nonce},
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")
        iv = os.urandom(_IV_BYTES)
        sealed = self._aead.encrypt(iv, payload, _ASSOCIATED_DATA)
        return _PREFIX + _encode(iv + sealed), claims

    def open(self, token: str, binding: CallBinding, *, now: float) -> StateClaims:
        """Return the claims of `token` if this gateway sealed it for exactly `binding` and it has not expired.

        Raises:
            InvalidRequestState: The token is malformed, altered, sealed under another key,
                expired, or bound to another call.
        """
        claims = self._decrypt(token)
        if now >= claims.expires:
            raise InvalidRequestState("expired")
        mismatched = [
            name for name, value in asdict(binding).items() if getattr(claims.binding, name) != value
        ]
        if mismatched:
            raise InvalidRequestState(f"issued for another call: {', '.join(mismatched)} differ")
        return claims

    def _decrypt(self, token: str) -> StateClaims:
        if not token.startswith(_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise InvalidRequestState("malformed")
        try:
            raw = _decode(token[len(_PREFIX) :])
        except ValueError:
            raise InvalidRequestState("malformed") from None
        if len(raw) < _IV_BYTES + _TAG_BYTES:
            raise InvalidRequestState("malformed")
        try:
            payload = self._aead.decrypt(raw[:_IV_BYTES], raw[_IV_BYTES:], _ASSOCIATED_DATA)
        except InvalidTag:
            raise InvalidRequestState("not sealed by this gateway, or altered") from None
        return _parse_claims(payload)


def load_or_create_key(path: Path) -> bytes:
    """Return the key stored at `path`, first writing 32 random bytes there (mode 0600) if it is missing.

    The key is written as hex text, which tools that show files can print: the published git
    server sends no response when a diff is not UTF-8. A file of 32 raw bytes, as earlier versions
    wrote, is read as it is.

    Two processes that start at once end up with the same key: each writes a
    temporary file and links it into place, and the one that loses the race
    reads the winner's key.

    Raises:
        ApprovalKeyError: The file cannot be read or created, or contains no 32-byte key.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            _create_key(path)
        os.chmod(path, 0o600)
        stored = path.read_bytes()
    except OSError as exc:
        raise ApprovalKeyError(path, exc.strerror or type(exc).__name__) from None
    key = parse_key(stored)
    if key is None:
        raise ApprovalKeyError(
            path, f"it contains {len(stored)} bytes, expected {KEY_BYTES * 2} hex digits or {KEY_BYTES} bytes"
        )
    return key


def parse_key(stored: bytes) -> bytes | None:
    """Return the key a key file contains: hex text, or 32 raw bytes; None when it is neither."""
    if len(stored) == KEY_BYTES:
        return stored
    try:
        key = bytes.fromhex(stored.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


def _create_key(path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES).hex().encode("ascii") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        # A hard link fails if the name exists, so a concurrent writer's key is never replaced.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def _parse_claims(payload: bytes) -> StateClaims:
    """Parse the claims of an authenticated payload, checking every field's type."""
    try:
        data = json.loads(payload)
        binding = data["binding"]
        fields = {name: binding[name] for name in CallBinding.__dataclass_fields__}
        expires, nonce = data["expires"], data["nonce"]
    except (ValueError, TypeError, KeyError):
        raise InvalidRequestState("malformed claims") from None
    if not _valid_fields(fields) or not isinstance(nonce, str) or not _is_number(expires):
        raise InvalidRequestState("malformed claims")
    return StateClaims(binding=CallBinding(**fields), expires=float(expires), nonce=nonce)


def _valid_fields(fields: dict[str, Any]) -> bool:
    return all(
        isinstance(value, str) or (name == "session" and value is None) for name, value in fields.items()
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the one canonical spelling of each byte string."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64url") from None
    if _encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data
