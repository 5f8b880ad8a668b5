"""The frozen model of the policy file's `[gateway.oauth]` table.

These settings make the HTTP gateway an OAuth resource server that accepts JWT
access tokens from one issuer, verified with public keys read from a local JWKS
file. Reading that file and verifying tokens is left to
`mcp_guard.gateway.oauth`; which client a token's `sub` stands for is set by
each client's `oauth_subjects`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_guard.config.rules import ClientConfig

# JWS `alg` values (RFC 7518 §3, RFC 8037) that PyJWT verifies with a public key. Shared-secret (HS*)
# algorithms are left out, because any party that can verify such a token can also sign one.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "ES256")
# Allows for clock skew between the issuer and this machine when checking `exp`, `nbf` and `iat`.
DEFAULT_LEEWAY_SECONDS = 30
MAX_LEEWAY_SECONDS = 300
# A scope token as RFC 6749 §3.3 defines it: printable ASCII except space, `"` and `\`.
SCOPE_PATTERN = r"^[\x21\x23-\x5B\x5D-\x7E]+$"


class OAuthSettings(BaseModel):
    """Settings for verifying OAuth access tokens (JWTs) offline, as a resource server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: Annotated[str, Field(min_length=1)]
    """The only accepted `iss` claim, compared as an exact string (a trailing slash matters)."""

    audience: Annotated[str, Field(min_length=1)]
    """The value that must appear in a token's `aud` claim: the identifier of this gateway."""

    jwks_file: Annotated[str, Field(min_length=1)]
    """JSON Web Key Set file with the issuer's public signing keys, read once when the gateway starts.
    Relative paths are resolved against the policy file's folder."""

    algorithms: Annotated[list[str], Field(min_length=1)] = list(DEFAULT_ALGORITHMS)
    """Accepted JWS `alg` header values. Only asymmetric algorithms are allowed, never "none" or HS256."""

    leeway_seconds: Annotated[int, Field(ge=0, le=MAX_LEEWAY_SECONDS)] = DEFAULT_LEEWAY_SECONDS
    """Allowed clock skew, in seconds, when checking the `exp`, `nbf` and `iat` claims."""

    required_scopes: list[Annotated[str, Field(pattern=SCOPE_PATTERN)]] = []
    """Scopes every token must carry, in its `scope` or `scp` claim."""

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        for index, name in enumerate(algorithms):
            if name.lower() == "none":
                raise ValueError(f'entry [{index}] is "none", which accepts unsigned tokens; remove it')
            if name.upper().startswith("HS"):
                raise ValueError(
                    f"entry [{index}] is {name!r}, a shared-secret algorithm: a token signed with "
                    "the public key as the secret would pass; use an asymmetric algorithm such as RS256"
                )
            if name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"entry [{index}] {name!r} is not a supported algorithm; "
                    f"use one of {', '.join(ASYMMETRIC_ALGORITHMS)}"
                )
        return algorithms


def check_oauth_subjects(oauth: OAuthSettings | None, clients: Mapping[str, ClientConfig]) -> list[str]:
    """Return one problem line for each `oauth_subjects` entry that cannot identify a client.

    A subject listed by two clients is ambiguous. Subjects without `[gateway.oauth]`, or
    `[gateway.oauth]` without any subject, would let no token in.
    """
    problems: list[str] = []
    owners: dict[str, str] = {}
    for name, client in clients.items():
        for position, subject in enumerate(client.oauth_subjects):
            where = f"clients.{name}.oauth_subjects[{position}]"
            if oauth is None:
                problems.append(
                    f"{where}: no [gateway.oauth] table is configured, so no token can carry this "
                    "subject; add [gateway.oauth] or remove oauth_subjects"
                )
                break
            owner = owners.setdefault(subject, name)
            if owner != name:
                problems.append(
                    f"{where}: subject {subject!r} is also listed by client {owner!r}; "
                    "list each subject under one client only"
                )
    if oauth is not None and not owners:
        problems.append(
            "gateway.oauth: no client lists oauth_subjects, so every OAuth token would be rejected; "
            "add the `sub` claim of each client's tokens to its oauth_subjects"
        )
    return problems
