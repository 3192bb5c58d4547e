"""`package.module:Name` import paths, and keyword checks for the objects they name.

Model, data, optimizer and scheduler kinds all accept an import path, so the user's own
code plugs in without registration. A path that does not resolve, a keyword the named
object does not take, and a value of the wrong kind for it are user errors (`ConfigError`),
found before any training.

Values are checked against the callee's annotation where it has one, else its default:
a bool default takes only true/false, a float takes a number (not a boolean, not a
string), an int takes an integer, a tuple default of two numbers a list of two numbers
(`betas: [0.9]` is refused here, not by an IndexError inside torch). Where neither tells
(no default, an annotation that is no plain type), the value passes.

Import paths run code, like a script: `config.import_paths` lists every one a config
names, and `--no-imports` refuses such a config before anything is imported.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
import types
import typing
from typing import Any

from optcmp.errors import ConfigError
from optcmp.values import did_you_mean, got, is_int, is_number

# Arguments optcmp passes itself, never expected from the config.
SUPPLIED = ("self", "params", "optimizer")


def is_import_path(text: str) -> bool:
    return isinstance(text, str) and ":" in text


def _import_module(module_name: str, path: str, where: str) -> Any:
    # The `optcmp` console script does not put the current folder on sys.path as
    # `python -m` does; users expect `mymodels:Net` next to their config to import.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                where, f"cannot import module `{missing}` (from `{path}`): not installed and not on the Python path"
            ) from None
        raise ConfigError(where, f"importing `{module_name}` failed: no module named `{missing}`") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(where, f"importing `{module_name}` failed: {type(e).__name__}: {e}") from None


def load_object(path: str, where: str) -> Any:
    """Import `package.module:Name` (Name may be dotted); a missing piece is a user error."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(where, f"`{path}` is not an import path; expected package.module:Name")
    obj: Any = _import_module(module_name, path, where)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(where, f"module `{module_name}` has no `{attr}`{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    return obj


def colon_hint(text: str) -> str:
    """For a dotted name without a colon, the form an import path takes."""
    return f" (an import path names the object after a colon: `{text}:Name`)" if "." in text and ":" not in text else ""


def display_name(obj: Any) -> str:
    return getattr(obj, "__name__", type(obj).__name__)


def signature_of(obj: Any) -> inspect.Signature | None:
    """The call signature, or None for objects Python cannot introspect (some C types)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


# --- what a parameter accepts -------------------------------------------------------
# An expectation is a small tree: ("bool",) ("int",) ("float",) ("str",) ("none",)
# ("literal", values) ("list", item expectation or None, length or None) ("any_of", [...]).

_NAMES = {"bool": ("bool",), "int": ("int",), "float": ("float",), "str": ("str",), "None": ("none",), "NoneType": ("none",)}
_IGNORED = ("Tensor",)  # a union member no YAML value can be (lr: float | Tensor takes a number)


def _from_string(text: str) -> tuple | None:
    """An expectation from a string annotation (`'float | list[float]'`), or None."""
    try:
        return _from_ast(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def _from_ast(node: ast.AST) -> tuple | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _any_of([_from_ast(node.left), _from_ast(node.right)])
    if isinstance(node, ast.Constant) and node.value is None:
        return ("none",)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _from_string(node.value)
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return "ignored" if name in _IGNORED else _NAMES.get(name)
    if isinstance(node, ast.Subscript):
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal" and all(isinstance(a, ast.Constant) for a in args):
            return ("literal", tuple(a.value for a in args))
        if head == "Optional":
            return _any_of([_from_ast(args[0]), ("none",)])
        if head == "Union":
            return _any_of([_from_ast(a) for a in args])
        if head in ("list", "List", "Sequence"):
            return ("list", _from_ast(args[0]), None)
        if head in ("tuple", "Tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return ("list", _from_ast(args[0]), None)
            items = [_from_ast(a) for a in args]
            return _fixed(items)
    return None


def _from_type(annotation: Any) -> tuple | None:
    """An expectation from a runtime annotation, or None when it is no plain type."""
    if isinstance(annotation, str):
        return _from_string(annotation)
    if annotation is type(None) or annotation is None:
        return ("none",)
    if isinstance(annotation, type) and annotation.__name__ in _IGNORED:
        return "ignored"  # type: ignore[return-value]
    if annotation in (bool, int, float, str):
        return _NAMES[annotation.__name__]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _any_of([_from_type(a) for a in args])
    if origin is typing.Literal:
        return ("literal", args)
    if origin in (list, typing.List):
        return ("list", _from_type(args[0]) if args else None, None)
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return ("list", _from_type(args[0]), None)
        return _fixed([_from_type(a) for a in args])
    return None


def _fixed(items: list) -> tuple | None:
    """A list of len(items) whose elements each meet their own expectation (shown as one)."""
    if any(i is None for i in items):
        return None
    kinds = [i for i in items if i != "ignored"]
    if not kinds:
        return None
    return ("list", _any_of(list(dict.fromkeys(kinds))), len(items))


def _any_of(options: list) -> tuple | None:
    """A union: unknown if any member is unknown; members no YAML value can be are dropped."""
    if any(o is None for o in options):
        return None
    kept = [o for o in options if o != "ignored"]
    flat = list(dict.fromkeys(x for o in kept for x in (o[1] if o[0] == "any_of" else [o])))
    if not flat:
        return "ignored"  # type: ignore[return-value]
    return flat[0] if len(flat) == 1 else ("any_of", flat)


def _from_default(default: Any) -> tuple | None:
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        return ("bool",)
    if isinstance(default, int):
        return ("int",)
    if isinstance(default, float):
        return ("float",)
    if isinstance(default, str):
        return ("str",)
    if isinstance(default, (tuple, list)) and default:
        items = [_from_default(x) if x is not None else ("none",) for x in default]
        return _fixed(items) if isinstance(default, tuple) else ("list", _any_of(list(dict.fromkeys(items))), None)
    return None


def expectation(param: inspect.Parameter) -> tuple | None:
    """What the parameter accepts: from its annotation where it has one, else its default."""
    if param.annotation is not inspect.Parameter.empty:
        found = _from_type(param.annotation)
        return None if found == "ignored" else found
    return _from_default(param.default)


def accepts(exp: tuple, value: Any) -> bool:
    kind = exp[0]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "none":
        return value is None
    if kind == "literal":
        return any(value == v and type(value) is type(v) for v in exp[1])
    if kind == "list":
        item, length = exp[1], exp[2]
        return isinstance(value, (list, tuple)) and (length is None or len(value) == length) and \
            (item is None or all(accepts(item, x) for x in value))
    return any(accepts(e, value) for e in exp[1])  # any_of


def describe(exp: tuple, plural: bool = False) -> str:
    kind = exp[0]
    words = {"bool": ("true or false", "booleans"), "int": ("an integer", "integers"), "float": ("a number", "numbers"),
             "str": ("a string", "strings"), "none": ("null", "nulls")}
    if kind in words:
        return words[kind][plural]
    if kind == "literal":
        return "one of " + ", ".join(map(str, exp[1]))
    if kind == "list":
        count = f"{exp[2]} " if exp[2] is not None else ""
        return f"a list of {count}{describe(exp[1], plural=True) if exp[1] else 'values'}"
    return " or ".join(describe(e, plural) for e in exp[1])


def check_kwargs(
    section: str, obj: Any, kwargs: dict[str, Any], supplied: tuple[str, ...] = SUPPLIED, own: tuple[str, ...] = ()
) -> None:
    """Every keyword must be a parameter of `obj` (unless it takes **kwargs), with a value
    of the kind the parameter's annotation or default says (`check_value`), and every
    required parameter must be given (by the config or, for `supplied`, by optcmp).
    `own` are the section's keys that optcmp consumes itself, offered in did-you-mean too."""
    sig = signature_of(obj)
    if sig is None:
        return
    params = sig.parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in supplied}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in named and key not in supplied:
                allowed = ", ".join(sorted(named)) or "none"
                raise ConfigError(
                    f"{section}.{key}",
                    f"`{display_name(obj)}` takes no argument `{key}`{did_you_mean(key, [*own, *named])}; "
                    f"allowed: {allowed}",
                )
    for key, value in kwargs.items():
        if key in named and key not in supplied:
            check_value(f"{section}.{key}", params[key], value, obj)
    for name, p in params.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and name not in kwargs and name not in supplied:
            raise ConfigError(f"{section}.{name}", f"`{display_name(obj)}` needs `{name}`")


def check_value(key: str, param: inspect.Parameter, value: Any, obj: Any = None) -> None:
    """A value of the wrong kind for `param` is an error naming `key` and what is allowed."""
    exp = expectation(param)
    if exp is not None and not accepts(exp, value):
        whose = f" (`{display_name(obj)}`'s {param.name})" if obj is not None else ""
        raise ConfigError(key, f"expected {describe(exp)}{whose}, {got(value)}")
