"""The canonical argument digest that binds an approval to exactly the approved call."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.approval.canonical import AmbiguousArguments, argument_digest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.legitimate("approval grant reused for another call")
def test_key_order_does_not_matter() -> None:
    assert argument_digest({"path": "a", "mode": 1}) == argument_digest({"mode": 1, "path": "a"})


@pytest.mark.legitimate("approval grant reused for another call")
def test_nested_key_order_does_not_matter() -> None:
    first = {"options": {"force": False, "depth": 2}}
    second = {"options": {"depth": 2, "force": False}}
    assert argument_digest(first) == argument_digest(second)


@pytest.mark.attack("approval grant reused for another call")
def test_unicode_forms_of_one_text_differ() -> None:
    # On Linux these name two different files, so an approval of one must not cover the other.
    composed = unicodedata.normalize("NFC", "/tmp/café")
    decomposed = unicodedata.normalize("NFD", "/tmp/café")
    assert composed != decomposed
    assert argument_digest({"path": composed}) != argument_digest({"path": decomposed})


@pytest.mark.attack("approval grant reused for another call", attempts=2)
def test_numbers_compare_as_parsed() -> None:
    assert argument_digest({"n": 1e2}) == argument_digest({"n": 100.0})
    assert argument_digest({"n": 1}) != argument_digest({"n": 1.0})
    assert argument_digest({"n": True}) != argument_digest({"n": 1})


@pytest.mark.parametrize(
    "changed",
    [{"path": "b"}, {"path": "a", "extra": None}, {"path": ["a"]}, {"Path": "a"}, {}],
)
@pytest.mark.attack("approval grant reused for another call")
def test_any_other_data_changes_the_digest(changed: dict[str, object]) -> None:
    assert argument_digest({"path": "a"}) != argument_digest(changed)


@pytest.mark.attack("approval grant reused for another call")
def test_keys_equal_after_normalising_are_rejected() -> None:
    keys = {unicodedata.normalize("NFC", "é"): 1, unicodedata.normalize("NFD", "é"): 2}
    with pytest.raises(AmbiguousArguments):
        argument_digest(keys)


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        argument_digest({"n": float("nan")})


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
@pytest.mark.legitimate("approval grant reused for another call")
def test_digest_ignores_insertion_order(arguments: dict[str, object]) -> None:
    reordered = dict(reversed(list(arguments.items())))
    try:
        expected = argument_digest(arguments)
    except AmbiguousArguments:
        return
    assert argument_digest(reordered) == expected
    assert expected.startswith("sha256:")
    assert len(expected) == 71
