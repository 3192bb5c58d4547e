"""Safe YAML reading that remembers where every key was, and rejects duplicate keys.

PyYAML's SafeLoader already refuses Python tags; on top of it this module
- reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`, which surprises everyone),
- refuses a key given twice in one mapping (PyYAML silently keeps the last),
- returns a map from dotted key (`optimizer.lr`) to its line, for error messages.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from optcmp.errors import OptcmpError


class _Loader(yaml.SafeLoader):
    pass


# Same as PyYAML's float resolver, plus exponent forms without a dot (1e-3, 5E+2).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _walk(node: yaml.Node, prefix: str, lines: dict[str, int], where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            dotted = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise OptcmpError(
                    f"{where}:{line}: {dotted}: duplicate key (first given on line {seen[key]}); "
                    "each key may appear once"
                )
            seen[key] = line
            lines[dotted] = line
            _walk(value_node, dotted, lines, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{prefix}[{i}]", lines, where)


def parse_yaml(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document; return its value and a dotted-key → line map."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        lines: dict[str, int] = {}
        if node is not None:
            _walk(node, "", lines, where)
        value = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if "could not determine a constructor" in str(e):
            problem = f"tag {e.problem.split('tag')[-1].strip() if e.problem else ''} is not allowed (plain YAML only)"
        raise OptcmpError(f"{where}{line}: {problem}") from None
    except yaml.YAMLError as e:
        raise OptcmpError(f"{where}: invalid YAML: {e}") from None
    return value, lines


def read_yaml_file(path: Path) -> tuple[Any, dict[str, int]]:
    """Read and parse a YAML file; a missing or unreadable file is a user error."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise OptcmpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OptcmpError(f"{path}: is a directory, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptcmpError(f"{path}: cannot read: {e}") from None
    return parse_yaml(text, str(path))


def parse_value(text: str, where: str) -> Any:
    """Read a command-line value as YAML (`0.1` → float, `[0,1]` → list, `adam` → str)."""
    value, _ = parse_yaml(text, where)
    return value


# libyaml's emitter where PyYAML was built with it: a tenth of the pure-Python one's time,
# which a sweep pays once per run (config.yaml), and the same text.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None)
