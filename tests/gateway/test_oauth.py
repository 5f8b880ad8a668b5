"""OAuth access tokens: JWTs verified offline with keys from a JWKS file, and mapped to clients by `sub`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import jwt
import mcp_types as types
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from support import HTTP_HEADERS, INITIALIZE, fixture_server, http_gateway, write_policy

from mcp_guard.config.models import GatewayConfig
from mcp_guard.config.oauth import OAuthSettings
from mcp_guard.config.rules import ClientConfig
from mcp_guard.errors import ConfigError
from mcp_guard.gateway.identity import ClientDirectory, hash_api_key
from mcp_guard.gateway.jwks import load_jwks
from mcp_guard.gateway.oauth import CombinedVerifier, JwtVerifier, TokenRejected

pytestmark = pytest.mark.anyio

ISSUER = "https://login.example.test/"
AUDIENCE = "https://gateway.example.test/mcp"
RSA_KID = "rsa-1"
EC_KID = "ec-1"
API_KEY = "mcpg_test-key-for-client-carol"
CLIENTS = {
    "alice": ClientConfig(oauth_subjects=["user-alice"]),
    "bob": ClientConfig(oauth_subjects=["user-bob"]),
    "carol": ClientConfig(api_key_hashes=[hash_api_key(API_KEY)]),
}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    return write_jwks(tmp_path / "jwks.json", [rsa_jwk(rsa_key, RSA_KID), ec_jwk(ec_key, EC_KID)])


@pytest.fixture
def verifier(jwks_file: Path) -> JwtVerifier:
    return JwtVerifier(settings(jwks_file), CLIENTS)


def settings(jwks_file: Path, **overrides: Any) -> OAuthSettings:
    return OAuthSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks_file), **overrides)


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "use": "sig"} if kid is None else {**jwk, "kid": kid, "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid}


def write_jwks(path: Path, keys: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"keys": keys}), encoding="utf-8")
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-alice", "iat": now, "exp": now + 600}
    return {key: value for key, value in {**base, **overrides}.items() if value is not None}


def sign(key: Any, payload: dict[str, Any], algorithm: str = "RS256", kid: str | None = RSA_KID) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(payload: dict[str, Any], secret: bytes, kid: str) -> str:
    """Sign by hand, because PyJWT rejects a PEM public key as an HMAC secret and this token uses one."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def rejection(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(token)
    return rejected.value.reason


# Accepted tokens


@pytest.mark.legitimate("forged OAuth token")
def test_rsa_token_maps_to_client(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(scope="tools.read tools.write"))

    access = verifier.verify(token)

    assert access.client_id == "alice"
    assert access.subject == "user-alice"
    assert access.scopes == ["tools.read", "tools.write"]
    assert access.claims == {"iss": ISSUER}
    assert access.resource == AUDIENCE
    assert access.token == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.legitimate("forged OAuth token")
def test_ec_token_maps_to_client(verifier: JwtVerifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = sign(ec_key, claims(sub="user-bob"), algorithm="ES256", kid=EC_KID)

    access = verifier.verify(token)

    assert access.client_id == "bob"


def test_expires_at_includes_leeway(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    exp = int(time.time()) + 600

    access = verifier.verify(sign(rsa_key, claims(exp=exp)))

    assert access.expires_at == exp + 30


@pytest.mark.legitimate("forged OAuth token")
def test_expired_within_leeway_accepted(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(exp=int(time.time()) - 5))

    assert verifier.verify(token).client_id == "alice"


@pytest.mark.legitimate("forged OAuth token")
def test_audience_list_accepted(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(aud=["https://other.example.test", AUDIENCE]))

    assert verifier.verify(token).client_id == "alice"


@pytest.mark.legitimate("forged OAuth token")
def test_scp_list_gives_scopes(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(settings(jwks_file, required_scopes=["mcp"]), CLIENTS)

    access = verifier.verify(sign(rsa_key, claims(scp=["mcp", "extra"])))

    assert access.scopes == ["mcp", "extra"]


@pytest.mark.legitimate("forged OAuth token")
def test_single_key_needs_no_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = write_jwks(tmp_path / "one.json", [rsa_jwk(rsa_key, None)])
    verifier = JwtVerifier(settings(jwks), CLIENTS)

    access = verifier.verify(sign(rsa_key, claims(), kid=None))

    assert access.client_id == "alice"


# Rejected tokens


@pytest.mark.attack("forged OAuth token")
def test_expired_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(exp=int(time.time()) - 120))

    assert rejection(verifier, token) == "expired"


@pytest.mark.attack("forged OAuth token")
def test_not_yet_valid_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(nbf=int(time.time()) + 120))

    assert rejection(verifier, token) == "not_yet_valid"


@pytest.mark.attack("forged OAuth token")
def test_wrong_issuer_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    other = sign(rsa_key, claims(iss="https://evil.example.test/"))
    without_slash = sign(rsa_key, claims(iss=ISSUER.rstrip("/")))

    assert rejection(verifier, other) == "wrong_issuer"
    assert rejection(verifier, without_slash) == "wrong_issuer"


@pytest.mark.attack("forged OAuth token")
def test_wrong_audience_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(aud="https://other.example.test"))

    assert rejection(verifier, token) == "wrong_audience"


@pytest.mark.attack("forged OAuth token")
def test_wrong_key_rejected(verifier: JwtVerifier, other_rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(other_rsa_key, claims())

    assert rejection(verifier, token) == "bad_signature"


@pytest.mark.attack("forged OAuth token")
def test_unknown_kid_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(), kid="rsa-2")

    assert rejection(verifier, token) == "unknown_kid"


@pytest.mark.attack("forged OAuth token")
def test_missing_kid_rejected_with_several_keys(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(), kid=None)

    assert rejection(verifier, token) == "missing_kid"


@pytest.mark.attack("forged OAuth token")
def test_alg_none_rejected(verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": RSA_KID})

    assert rejection(verifier, token) == "algorithm_not_allowed"


@pytest.mark.attack("forged OAuth token")
def test_hs256_with_public_key_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hs256_token(claims(), public_pem, RSA_KID)

    assert rejection(verifier, token) == "algorithm_not_allowed"


@pytest.mark.attack("forged OAuth token")
def test_algorithm_outside_allow_list_rejected(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(settings(jwks_file, algorithms=["ES256"]), CLIENTS)

    assert rejection(verifier, sign(rsa_key, claims())) == "algorithm_not_allowed"


@pytest.mark.attack("forged OAuth token")
def test_algorithm_for_other_key_type_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    # An RS256 signature that names the EC key.
    token = sign(rsa_key, claims(), kid=EC_KID)

    assert rejection(verifier, token) == "algorithm_mismatch"


@pytest.mark.attack("forged OAuth token")
def test_key_alg_must_match_token(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = write_jwks(tmp_path / "ps.json", [{**rsa_jwk(rsa_key, RSA_KID), "alg": "PS256"}])
    verifier = JwtVerifier(settings(jwks, algorithms=["RS256", "PS256"]), CLIENTS)

    assert rejection(verifier, sign(rsa_key, claims())) == "algorithm_mismatch"
    assert verifier.verify(sign(rsa_key, claims(), algorithm="PS256")).client_id == "alice"


@pytest.mark.attack("forged OAuth token")
def test_missing_scope_rejected(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(settings(jwks_file, required_scopes=["mcp", "tools"]), CLIENTS)
    token = sign(rsa_key, claims(scope="mcp"))

    assert rejection(verifier, token) == "missing_scope"


@pytest.mark.attack("forged OAuth token")
def test_unknown_subject_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(sub="user-mallory"))

    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(token)

    assert rejected.value.reason == "unknown_subject"
    assert rejected.value.subject == "user-mallory"


@pytest.mark.attack("forged OAuth token")
def test_missing_exp_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(exp=None))

    assert rejection(verifier, token) == "missing_claim"


@pytest.mark.attack("forged OAuth token")
def test_string_exp_rejected(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(exp=str(int(time.time()) + 600)))

    assert rejection(verifier, token) == "invalid_claim"


@pytest.mark.attack("forged OAuth token")
def test_malformed_token_rejected(verifier: JwtVerifier) -> None:
    assert rejection(verifier, "not-a-jwt") == "malformed"


@pytest.mark.attack("secret in audit trail or logs")
async def test_rejection_logged_without_token(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(aud="https://other.example.test"))

    with structlog.testing.capture_logs() as events:
        access = await verifier.verify_token(token)

    assert access is None
    assert [event["reason"] for event in events if event["event"] == "authentication_failed"] == [
        "wrong_audience"
    ]
    assert not any(token in str(value) for event in events for value in event.values())


# The JWKS file


def test_missing_jwks_names_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    with pytest.raises(ConfigError) as error:
        JwtVerifier(settings(path), CLIENTS)

    assert error.value.source == str(path)
    assert str(path) in str(error.value)


def test_invalid_json_jwks_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert error.value.source == str(path)
    assert "not valid JSON" in error.value.problems[0]


def test_jwks_without_keys_rejected(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "empty.json", [])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert "not a JWKS" in error.value.problems[0]


def test_private_key_in_jwks_rejected(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private: dict[str, Any] = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    path = write_jwks(tmp_path / "private.json", [{**private, "kid": RSA_KID}])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert error.value.problems[0].startswith("keys[0]: the key contains private key material")
    assert private["d"] not in str(error.value)


def test_symmetric_key_in_jwks_rejected(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "oct.json", [{"kty": "oct", "k": b64url(b"s" * 32), "kid": "h"}])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert "symmetric" in error.value.problems[0]


def test_short_rsa_key_rejected(tmp_path: Path) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_jwks(tmp_path / "short.json", [rsa_jwk(short, RSA_KID)])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert "1024 bits" in error.value.problems[0]


def test_duplicate_kid_rejected(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> None:
    path = write_jwks(tmp_path / "dup.json", [rsa_jwk(rsa_key, "k"), ec_jwk(ec_key, "k")])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert error.value.problems == ["keys[1]: kid 'k' is used by an earlier key; give each key its own"]


def test_several_keys_need_kids(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> None:
    path = write_jwks(tmp_path / "nokid.json", [rsa_jwk(rsa_key, None), ec_jwk(ec_key, EC_KID)])

    with pytest.raises(ConfigError) as error:
        load_jwks(path)

    assert error.value.problems[0].startswith("keys[0]: the key has no kid")


def test_duplicate_subject_rejected(jwks_file: Path) -> None:
    clients = {"a": ClientConfig(oauth_subjects=["same"]), "b": ClientConfig(oauth_subjects=["same"])}

    with pytest.raises(ConfigError) as error:
        JwtVerifier(settings(jwks_file), clients)

    assert error.value.problems[0].startswith("clients.b.oauth_subjects[0]: subject 'same'")


# API keys and OAuth tokens on one gateway


@pytest.mark.legitimate("missing or wrong API key")
async def test_combined_accepts_api_key(verifier: JwtVerifier) -> None:
    combined = CombinedVerifier(directory_for(CLIENTS), verifier)

    access = await combined.verify_token(API_KEY)

    assert access is not None
    assert access.client_id == "carol"
    assert access.token == hash_api_key(API_KEY)


@pytest.mark.legitimate("forged OAuth token")
async def test_combined_accepts_jwt(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    combined = CombinedVerifier(directory_for(CLIENTS), verifier)

    access = await combined.verify_token(sign(rsa_key, claims()))

    assert access is not None
    assert access.client_id == "alice"


@pytest.mark.attack("missing or wrong API key")
async def test_combined_rejects_unknown_token(verifier: JwtVerifier) -> None:
    combined = CombinedVerifier(directory_for(CLIENTS), verifier)

    with structlog.testing.capture_logs() as events:
        access = await combined.verify_token("mcpg_not-a-known-key")

    assert access is None
    assert [event["reason"] for event in events if event["event"] == "authentication_failed"] == [
        "unknown API key and not a JWT"
    ]


def directory_for(clients: dict[str, ClientConfig]) -> ClientDirectory:
    return ClientDirectory(GatewayConfig(clients=clients), environ={})


# A real gateway process


@pytest.mark.timeout(60)
@pytest.mark.attack("forged OAuth token", attempts=3)
async def test_http_gateway_accepts_oauth_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    write_jwks(tmp_path / "jwks.json", [rsa_jwk(rsa_key, RSA_KID), ec_jwk(ec_key, EC_KID)])
    # A relative jwks_file is resolved against the policy file's folder, not the working directory.
    oauth = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": "jwks.json"}
    clients = {
        "alice": {"oauth_subjects": ["user-alice"]},
        "bob": {"oauth_subjects": ["user-bob"]},
        "carol": {"api_key_hashes": [hash_api_key(API_KEY)]},
    }
    rules = [
        {
            "name": "alice echoes",
            "clients": ["alice"],
            "server": "alpha",
            "tools": ["echo"],
            "decision": "auto",
            "write": True,
        }
    ]
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, {"oauth": oauth}, rules=rules, clients=clients
    )
    alice = {"Authorization": f"Bearer {sign(rsa_key, claims())}"}
    bob = {"Authorization": f"Bearer {sign(ec_key, claims(sub='user-bob'), algorithm='ES256', kid=EC_KID)}"}
    forged = {"Authorization": f"Bearer {sign(rsa_key, claims(iss='https://evil.example.test/'))}"}

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient() as http:
            missing = await http.post(url, json=INITIALIZE, headers=HTTP_HEADERS)
            rejected = await http.post(url, json=INITIALIZE, headers={**HTTP_HEADERS, **forged})
            accepted = await http.post(url, json=INITIALIZE, headers={**HTTP_HEADERS, **alice})
            api_key = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Authorization": f"Bearer {API_KEY}"}
            )
        async with (
            httpx2.AsyncClient(headers=alice) as http_alice,
            Client(streamable_http_client(url, http_client=http_alice), mode="legacy") as client_alice,
        ):
            alice_tools = {tool.name for tool in (await client_alice.list_tools()).tools}
        async with (
            httpx2.AsyncClient(headers=bob) as http_bob,
            Client(
                streamable_http_client(url, http_client=http_bob),
                mode="legacy",
                client_info=types.Implementation(name="alice", version="1"),
            ) as client_bob,
        ):
            bob_tools = {tool.name for tool in (await client_bob.list_tools()).tools}

    assert missing.status_code == 401
    assert rejected.status_code == 401
    assert accepted.status_code == 200
    assert api_key.status_code == 200
    assert alice_tools == {"alpha__echo"}
    assert bob_tools == set()
