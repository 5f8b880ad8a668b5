"""OAuth access tokens (JWTs) verified offline, as a resource server.

`JwtVerifier` reads the issuer's public keys once, from the JWKS file named in
`[gateway.oauth]`. It accepts a token only when the signature verifies under an
allowed asymmetric algorithm and the `iss`, `aud`, `exp` and `nbf` claims hold.
The token must also carry the required scopes, and its `sub` must be listed in
one client's `oauth_subjects`. That client, never the self-reported
`clientInfo`, is who the request comes from. `CombinedVerifier` lets API-key clients and OAuth clients
share one gateway. What a client may do is left to the policy engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jwt
import structlog
from mcp.server.auth.provider import AccessToken

from mcp_guard.config.oauth import OAuthSettings, check_oauth_subjects
from mcp_guard.config.rules import ClientConfig
from mcp_guard.errors import ConfigError, GuardError
from mcp_guard.gateway.identity import ClientDirectory, hash_api_key, request_peer
from mcp_guard.gateway.jwks import SigningKey, load_jwks

log = structlog.get_logger(module=__name__)

# Claims a token must carry. Without `exp` a leaked token would be valid forever.
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# JWS algorithm name prefixes that each JWK key type can verify.
ALGORITHMS_BY_KEY_TYPE = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
TOKEN_HASH_PREFIX = "sha256:"

RejectReason = Literal[
    "malformed",
    "algorithm_not_allowed",
    "missing_kid",
    "unknown_kid",
    "algorithm_mismatch",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "missing_claim",
    "invalid_claim",
    "missing_scope",
    "unknown_subject",
]


class TokenRejected(GuardError):
    """A bearer token failed verification.

    Attributes:
        reason: A short code for the check that failed, for logs and tests.
        subject: The token's verified `sub` claim, when the signature and claims were valid.
    """

    def __init__(self, reason: RejectReason, detail: str, *, subject: str | None = None) -> None:
        self.reason = reason
        self.subject = subject
        super().__init__(f"The access token was rejected because {detail} ({reason}).")


class JwtVerifier:
    """The SDK token verifier for OAuth access tokens signed by the configured issuer."""

    def __init__(self, settings: OAuthSettings, clients: Mapping[str, ClientConfig]) -> None:
        """Read the JWKS file and index the clients by OAuth subject.

        Raises:
            ConfigError: The JWKS file is missing or invalid, or a subject is listed twice.
        """
        problems = check_oauth_subjects(settings, clients)
        if problems:
            raise ConfigError("the policy file", problems)
        self._settings = settings
        self._keys = load_jwks(Path(settings.jwks_file))
        self._clients_by_subject = {
            subject: name for name, client in clients.items() for subject in client.oauth_subjects
        }
        log.info("jwks_loaded", file=settings.jwks_file, keys=len(self._keys))

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return an access token naming the client, or None, which makes the SDK respond with 401."""
        try:
            return self.verify(token)
        except TokenRejected as exc:
            _log_rejected_token(exc)
            return None

    def verify(self, token: str) -> AccessToken:
        """Verify `token` and return the access token of the client its `sub` names.

        Raises:
            TokenRejected: A check failed, and `reason` names it.
        """
        header = _unverified_header(token)
        algorithm = self._allowed_algorithm(header)
        key = self._select_key(header, algorithm)
        claims = self._decode(token, key, algorithm)
        subject: str = claims["sub"]
        scopes = _scopes(claims)

        missing = [scope for scope in self._settings.required_scopes if scope not in scopes]
        if missing:
            raise TokenRejected(
                "missing_scope", f"the token lacks the scopes {', '.join(missing)}", subject=subject
            )
        client = self._clients_by_subject.get(subject)
        if client is None:
            raise TokenRejected(
                "unknown_subject", "no client lists this subject in oauth_subjects", subject=subject
            )
        return AccessToken(
            token=TOKEN_HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest(),
            client_id=client,
            scopes=scopes,
            # The SDK rejects a token once `expires_at` has passed, with no leeway of its own.
            expires_at=int(claims["exp"]) + self._settings.leeway_seconds,
            resource=self._settings.audience,
            subject=subject,
            claims={"iss": claims["iss"]},
        )

    def _allowed_algorithm(self, header: Mapping[str, Any]) -> str:
        # Checked before any key is chosen, so "none" and HS256 never reach signature verification.
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._settings.algorithms:
            raise TokenRejected("algorithm_not_allowed", "the token's alg is not in gateway.oauth.algorithms")
        return algorithm

    def _select_key(self, header: Mapping[str, Any], algorithm: str) -> SigningKey:
        kid = header.get("kid")
        if kid is None:
            # A token may omit `kid` only when there is no choice to make.
            if len(self._keys) != 1:
                raise TokenRejected("missing_kid", "the token names no kid and the JWKS has several keys")
            key = self._keys[0]
        else:
            matches = [candidate for candidate in self._keys if candidate.kid == kid]
            if not matches:
                raise TokenRejected("unknown_kid", "no key in the JWKS file has the token's kid")
            key = matches[0]

        if key.algorithm is not None and key.algorithm != algorithm:
            raise TokenRejected("algorithm_mismatch", f"the key is for {key.algorithm}, not {algorithm}")
        if not algorithm.startswith(ALGORITHMS_BY_KEY_TYPE[key.key_type]):
            raise TokenRejected("algorithm_mismatch", f"a {key.key_type} key cannot verify {algorithm}")
        return key

    def _decode(self, token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        """Verify the signature and the registered claims, translating PyJWT's errors."""
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": REQUIRED_CLAIMS, "verify_sub": True, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("bad_signature", "the signature does not verify") from exc
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("expired", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejected("not_yet_valid", "the token is not valid yet (nbf or iat)") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("wrong_issuer", "iss is not gateway.oauth.issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("wrong_audience", "aud does not contain gateway.oauth.audience") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", f"the token has no {exc.claim!r} claim") from exc
        except jwt.DecodeError as exc:
            raise TokenRejected("malformed", "the token is not a well-formed JWT") from exc
        except jwt.InvalidKeyError as exc:
            # For example an ES256 token naming a P-384 key.
            raise TokenRejected("algorithm_mismatch", f"the key cannot verify {algorithm}") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("invalid_claim", "a claim has an invalid value") from exc
        _check_times_are_numbers(claims)
        return claims


class CombinedVerifier:
    """The SDK token verifier for a gateway with API-key clients and OAuth clients.

    A bearer token is first compared with the API keys, then verified as a JWT.
    """

    def __init__(self, directory: ClientDirectory, jwts: JwtVerifier) -> None:
        self._directory = directory
        self._jwts = jwts

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return an access token naming the client, or None, which makes the SDK respond with 401."""
        name = self._directory.client_for_key(token)
        if name is not None:
            return AccessToken(token=hash_api_key(token), client_id=name, scopes=[])
        try:
            return self._jwts.verify(token)
        except TokenRejected as exc:
            if exc.reason == "malformed":
                log.warning(
                    "authentication_failed", reason="unknown API key and not a JWT", peer=request_peer()
                )
            else:
                _log_rejected_token(exc)
            return None


def _log_rejected_token(exc: TokenRejected) -> None:
    log.warning(
        "authentication_failed", method="oauth", reason=exc.reason, subject=exc.subject, peer=request_peer()
    )


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise TokenRejected("malformed", "the token is not a well-formed JWT") from exc


def _check_times_are_numbers(claims: Mapping[str, Any]) -> None:
    # PyJWT passes the time claims through int(), which also accepts a string such as "1700000000".
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenRejected("invalid_claim", f"the {name!r} claim is not a number")


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    """Return the scopes of `scope` (RFC 9068: space-separated) and `scp` (a list, or a string)."""
    scopes: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            scopes += value.split()
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            scopes += value
        else:
            raise TokenRejected(
                "invalid_claim", f"the {name!r} claim is neither a string nor a list of strings"
            )
    return list(dict.fromkeys(scopes))
