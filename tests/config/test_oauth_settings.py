"""The `[gateway.oauth]` table and the clients' `oauth_subjects`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mcp_guard.config.oauth import OAuthSettings, check_oauth_subjects
from mcp_guard.config.rules import ClientConfig

REQUIRED = {"issuer": "https://login.example.test/", "audience": "mcp-guard", "jwks_file": "jwks.json"}


def test_defaults_allow_rs256_and_es256() -> None:
    settings = OAuthSettings(**REQUIRED)

    assert settings.algorithms == ["RS256", "ES256"]
    assert settings.leeway_seconds == 30
    assert settings.required_scopes == []


@pytest.mark.parametrize("algorithm", ["none", "None", "HS256", "hs512"])
def test_unsafe_algorithm_rejected(algorithm: str) -> None:
    with pytest.raises(ValidationError) as error:
        OAuthSettings(**REQUIRED, algorithms=["RS256", algorithm])

    assert "entry [1]" in str(error.value)


def test_unknown_algorithm_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        OAuthSettings(**REQUIRED, algorithms=["RS257"])

    assert "not a supported algorithm" in str(error.value)


def test_scope_with_space_rejected() -> None:
    with pytest.raises(ValidationError):
        OAuthSettings(**REQUIRED, required_scopes=["tools read"])


def test_leeway_bounded() -> None:
    with pytest.raises(ValidationError):
        OAuthSettings(**REQUIRED, leeway_seconds=3600)


def test_unknown_key_rejected() -> None:
    with pytest.raises(ValidationError):
        OAuthSettings(**REQUIRED, jwks_url="https://login.example.test/jwks")


def test_empty_subject_rejected() -> None:
    with pytest.raises(ValidationError):
        ClientConfig(oauth_subjects=[""])


def test_subject_of_two_clients_reported() -> None:
    clients = {"a": ClientConfig(oauth_subjects=["s1"]), "b": ClientConfig(oauth_subjects=["s2", "s1"])}

    problems = check_oauth_subjects(OAuthSettings(**REQUIRED), clients)

    assert problems == [
        "clients.b.oauth_subjects[1]: subject 's1' is also listed by client 'a'; "
        "list each subject under one client only"
    ]


def test_subjects_without_oauth_reported() -> None:
    clients = {"a": ClientConfig(oauth_subjects=["s1", "s2"])}

    problems = check_oauth_subjects(None, clients)

    assert len(problems) == 1
    assert problems[0].startswith("clients.a.oauth_subjects[0]: no [gateway.oauth] table")


def test_oauth_without_subjects_reported() -> None:
    problems = check_oauth_subjects(OAuthSettings(**REQUIRED), {"a": ClientConfig()})

    assert len(problems) == 1
    assert problems[0].startswith("gateway.oauth: no client lists oauth_subjects")


def test_no_oauth_no_subjects_fine() -> None:
    assert check_oauth_subjects(None, {"a": ClientConfig()}) == []
