"""Exported names are client-safe, unique, deterministic and never shadow one another."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.downstream.naming import EXPORTED_NAME, export_names

PREFIXES = {"alpha": "alpha", "beta": "beta", "a": "a"}


@pytest.mark.legitimate("tool name shadowing")
def test_plain_name_kept() -> None:
    names = export_names([("alpha", "search")], PREFIXES, 48)

    assert names == {("alpha", "search"): "alpha__search"}


def test_long_name_shortened_with_hash() -> None:
    long_name = "x" * 70

    exported = export_names([("alpha", long_name)], PREFIXES, 48)[("alpha", long_name)]

    assert len(exported) == 48
    assert exported.startswith("alpha__xxx")
    assert EXPORTED_NAME.match(exported)


@pytest.mark.attack("tool name shadowing")
def test_mapped_characters_get_hash() -> None:
    names = export_names([("alpha", "dotted.name"), ("alpha", "dotted_name")], PREFIXES, 48)

    assert names[("alpha", "dotted_name")] == "alpha__dotted_name"
    assert names[("alpha", "dotted.name")].startswith("alpha__dotted_name_")
    assert names[("alpha", "dotted.name")] != names[("alpha", "dotted_name")]


@pytest.mark.attack("tool name shadowing")
def test_prefix_collision_both_hashed() -> None:
    # Server "a" exporting "b__c" and a server with prefix "a__b" exporting "c" meet at "a__b__c".
    names = export_names([("a", "b__c"), ("ab", "c")], {"a": "a", "ab": "a__b"}, 48)

    assert names[("a", "b__c")] != names[("ab", "c")]
    assert names[("a", "b__c")] != "a__b__c"
    assert names[("ab", "c")] != "a__b__c"


def test_same_result_in_any_order() -> None:
    keys = [("alpha", "x.y"), ("alpha", "x_y"), ("beta", "search"), ("alpha", "z" * 80)]

    forward = export_names(keys, PREFIXES, 48)
    backward = export_names(list(reversed(keys)), PREFIXES, 48)

    assert forward == backward


@pytest.mark.attack("tool name shadowing")
def test_unicode_and_control_mapped() -> None:
    names = export_names([("alpha", "séarch\n"), ("alpha", "ѕearch")], PREFIXES, 48)

    assert all(EXPORTED_NAME.match(name) for name in names.values())
    assert len(set(names.values())) == 2


@given(st.lists(st.tuples(st.sampled_from(["alpha", "beta"]), st.text(min_size=1, max_size=90)), max_size=40))
@pytest.mark.attack("tool name shadowing", attempts=100)
def test_names_always_valid_and_unique(keys: list[tuple[str, str]]) -> None:
    names = export_names(keys, PREFIXES, 40)

    assert len(set(names.values())) == len(names)
    assert all(EXPORTED_NAME.match(name) and len(name) <= 40 for name in names.values())
