"""Bounded YAML reading: aliases counted as they expand, nesting depth, recursive and
undefined aliases, and the texts and lines kept for messages."""
from __future__ import annotations

import pytest

from optcmp.errors import OptcmpError
from optcmp.yamlio import MAX_DEPTH, MAX_NODES, parse_yaml


def error_of(text: str) -> str:
    with pytest.raises(OptcmpError) as exc:
        parse_yaml(text, "x.yaml")
    return str(exc.value)


def test_lines_and_texts_are_kept():
    parsed = parse_yaml("optimizer:\n  lr: yes\n  groups:\n    - {params: head, lr: -1}\n", "x.yaml")
    assert parsed.value == {"optimizer": {"lr": True, "groups": [{"params": "head", "lr": -1}]}}
    assert parsed.lines == {"optimizer": 1, "optimizer.lr": 2, "optimizer.groups": 3, "optimizer.groups[0]": 4,
                            "optimizer.groups[0].params": 4, "optimizer.groups[0].lr": 4}
    assert parsed.texts == {"optimizer.lr": "yes", "optimizer.groups[0].params": "head", "optimizer.groups[0].lr": "-1"}
    value, lines = parsed  # as before texts were kept
    assert value == parsed.value and lines == parsed.lines


def test_exponents_without_a_dot_are_floats():
    assert parse_yaml("a: 1e-3\nb: 5E+2\nc: 1.0e-3\n", "x").value == {"a": 0.001, "b": 500.0, "c": 0.001}


def test_aliases_count_what_they_repeat():
    ok = "a: &a [" + ", ".join(["1"] * 9) + "]\nb: [" + ", ".join(["*a"] * 9) + "]\n"
    assert parse_yaml(ok, "x").value["b"] == [[1] * 9] * 9
    per_level = 1000
    bomb = "a: &a [" + ", ".join(["1"] * per_level) + "]\nb: &b [" + ", ".join(["*a"] * per_level) + "]\n"
    assert error_of(bomb) == (f"x.yaml:2: b: the document expands to more than {MAX_NODES:,} values (aliases count "
                              f"what they repeat); allowed: at most {MAX_NODES:,}")


def test_nesting_is_bounded():
    deepest = MAX_DEPTH - 1  # the top-level mapping is the first level
    assert parse_yaml("a: " + "[" * deepest + "]" * deepest, "x").value is not None
    assert error_of("a: " + "[" * (deepest + 1) + "]" * (deepest + 1)) == (
        f"x.yaml:1: {('a' + '[0]' * 40)[:39]}…: nested more than {MAX_DEPTH} levels deep; allowed: at most "
        f"{MAX_DEPTH} levels of mappings and lists")


def test_a_python_tag_is_refused_by_name():
    assert error_of("name: !!python/name:os.system\n") == (
        "x.yaml:1: the tag !!python/name:os.system is not allowed; allowed: plain YAML (mappings, lists, strings, "
        "numbers, booleans, null)")
