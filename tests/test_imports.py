"""Keyword checks of imported and torch objects: names against the signature, values
against the parameter's annotation or default (strict: a bool is not a number)."""
from __future__ import annotations

import inspect
from typing import Literal

import pytest
import torch

from optcmp.errors import ConfigError
from optcmp.imports import check_kwargs, describe, expectation


def _f(a: float = 1.0, b: bool = False, c=3, d=(0.9, 0.99), e: "int | None" = None,
       g: Literal["x", "y"] = "x", h=None, t: "torch.Tensor | float" = 1.0, u=(None, 1e-3), v="s", w: object = 2.0):
    return None


@pytest.mark.parametrize("name, text, good, bad", [
    ("a", "a number", [1, 2.5], [True, "1.0", None]),
    ("b", "true or false", [True, False], [0, 1, "false", None]),
    ("c", "an integer", [0, -3], [1.5, True, "3"]),
    ("d", "a list of 2 numbers", [[0.1, 0.2], (1, 2)], [[0.9], [0.9, True], 0.9, [0.1, 0.2, 0.3]]),
    ("e", "an integer or null", [None, 4], [4.0, "4"]),
    ("g", "one of x, y", ["x", "y"], ["z", 1]),
    ("t", "a number", [0.5], ["0.5"]),
    ("u", "a list of 2 nulls or numbers", [[None, 0.1], [1, 2]], [[None], ["a", 1]]),
    ("v", "a string", ["other"], [1, None]),
])
def test_expectations_from_annotations_and_defaults(name, text, good, bad):
    param = inspect.signature(_f).parameters[name]
    exp = expectation(param)
    assert describe(exp) == text
    for value in good:
        check_kwargs("k", _f, {name: value})
    for value in bad:
        with pytest.raises(ConfigError):
            check_kwargs("k", _f, {name: value})


def test_a_parameter_without_a_plain_type_takes_anything():
    for name in ("h", "w"):
        assert expectation(inspect.signature(_f).parameters[name]) is None
        check_kwargs("k", _f, {name: "anything"})


def test_torch_annotations():
    adam = inspect.signature(torch.optim.Adam).parameters
    assert describe(expectation(adam["lr"])) == "a number"  # float | Tensor: no YAML value is a tensor
    assert describe(expectation(adam["betas"])) == "a list of 2 numbers"
    assert describe(expectation(adam["foreach"])) == "true or false or null"
    plateau = inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters
    assert describe(expectation(plateau["min_lr"])) == "a list of numbers or a number"  # a string annotation
    assert expectation(inspect.signature(torch.optim.lr_scheduler.LambdaLR).parameters["lr_lambda"]) is None


def test_names_and_values_in_one_message():
    with pytest.raises(ConfigError) as exc:
        check_kwargs("optimizer", torch.optim.SGD, {"lr": 0.1, "nesterov": "true"})
    assert (exc.value.key, exc.value.message) == (
        "optimizer.nesterov", "expected true or false (`SGD`'s nesterov), got 'true' (a string)")
