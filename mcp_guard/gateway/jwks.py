"""Reading an issuer's public signing keys from a JSON Web Key Set (RFC 7517) file.

The file is read once, when the gateway starts, and every problem in it is
reported at once in a `ConfigError` that names the file. Only public keys of
asymmetric signature algorithms are accepted. Verifying tokens with the keys is
left to `mcp_guard.gateway.oauth`.

NOTE: Fetching the JWKS from the issuer (its `jwks_uri`) is not built, so after
the issuer rotates its keys the file must be updated and the gateway restarted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from mcp_guard.config.oauth import ASYMMETRIC_ALGORITHMS
from mcp_guard.errors import ConfigError

SUPPORTED_KEY_TYPES = ("RSA", "EC", "OKP")
# JWK members that carry private or symmetric key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
SECRET_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# NIST SP 800-131A disallows shorter RSA keys for new signatures, and PyJWT warns below it too.
MIN_RSA_KEY_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    """One public key of the issuer."""

    kid: str | None
    """The key id that tokens name in their `kid` header, if the JWK has one."""

    key_type: str
    """The JWK `kty`: "RSA", "EC" or "OKP"."""

    algorithm: str | None
    """The JWK `alg`, when it restricts the key to one algorithm."""

    public_key: Any
    """The key as a `cryptography` public key object."""


def load_jwks(path: Path) -> tuple[SigningKey, ...]:
    """Read the public signing keys from the JWKS file at `path`.

    Raises:
        ConfigError: The file is missing, is not a JWKS, or contains a key that cannot be used.
    """
    entries = _read_entries(path)
    keys: list[SigningKey] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        try:
            keys.append(_signing_key(entry))
        except ValueError as exc:
            problems.append(f"keys[{index}]: {exc}")
    problems += _kid_problems(keys) if not problems else []
    if problems:
        raise ConfigError(str(path), problems)
    return tuple(keys)


def _read_entries(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(path), ["the JWKS file does not exist; check gateway.oauth.jwks_file"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"the JWKS file cannot be read: {exc}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"the JWKS file is not valid JSON: {exc}"]) from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            str(path),
            ['the file is not a JWKS: expected a JSON object {"keys": [...]} with at least one key'],
        )
    return entries


def _signing_key(entry: Any) -> SigningKey:
    """Check one JWK and convert it. Raise ValueError, with the fix, when it cannot be used."""
    if not isinstance(entry, dict):
        raise ValueError("the entry is not a JSON object; write each key as a JWK object")
    key_type = entry.get("kty")
    if key_type == "oct":
        raise ValueError(
            'the key is a symmetric ("oct") key; the gateway accepts only public keys (RSA, EC, OKP)'
        )
    if key_type not in SUPPORTED_KEY_TYPES:
        raise ValueError(f"kty {key_type!r} is not supported; use one of {', '.join(SUPPORTED_KEY_TYPES)}")
    secrets = [member for member in SECRET_MEMBERS if member in entry]
    if secrets:
        # The message names the members only, never their values.
        raise ValueError(
            f"the key contains private key material ({', '.join(secrets)}); keep only the public key"
        )
    if entry.get("use", "sig") != "sig":
        raise ValueError(f'use is {entry["use"]!r}; a signing key has use "sig" or no use')
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string; write it as a JSON string")
    algorithm = entry.get("alg")
    if algorithm is not None and algorithm not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"alg {algorithm!r} is not supported; use one of {', '.join(ASYMMETRIC_ALGORITHMS)}")

    try:
        public_key = jwt.PyJWK(entry).key
    except jwt.PyJWTError as exc:
        raise ValueError(f"the key cannot be used: {exc}") from None
    if key_type == "RSA" and public_key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"the RSA key has {public_key.key_size} bits; use at least {MIN_RSA_KEY_BITS}")
    return SigningKey(kid=kid, key_type=key_type, algorithm=algorithm, public_key=public_key)


def _kid_problems(keys: list[SigningKey]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key.kid is None and len(keys) > 1:
            problems.append(f"keys[{index}]: the key has no kid, which a set of several keys needs on each")
        elif key.kid is not None and key.kid in seen:
            problems.append(
                f"keys[{index}]: kid {key.kid!r} is used by an earlier key; give each key its own"
            )
        if key.kid is not None:
            seen.add(key.kid)
    return problems
