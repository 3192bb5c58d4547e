"""Safe, bounded YAML reading that remembers where every key was, and rejects duplicate keys.

PyYAML's SafeLoader already refuses Python tags; on top of it this module
- reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`, which surprises everyone),
- refuses a key given twice in one mapping (PyYAML silently keeps the last),
- bounds what it reads, so that no input can make it hang or blow the stack: files of at
  most `MAX_BYTES`, nesting at most `MAX_DEPTH` levels deep, and documents of at most
  `MAX_NODES` values *counting every alias expansion* (a "billion laughs" bomb of 9
  levels × 9 aliases is refused from its event stream, before anything is built),
- returns, for error messages, a map from dotted key (`optimizer.lr`) to its line, and
  one from dotted key to the scalar's text as written (`yes`, where YAML made True of it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optcmp.errors import OptcmpError

MAX_BYTES = 1 << 20  # 1 MiB: the largest shipped config is 2 KB
MAX_DEPTH = 32  # mappings and lists nested in each other; a config needs 4 or 5
MAX_NODES = 100_000  # values in the document, aliases expanded; a large sweep has a few thousand

_BASES = [b for b in (getattr(yaml, "CSafeLoader", None),) if b is not None] or [yaml.SafeLoader]


class _Loader(_BASES[0]):  # libyaml's parser where PyYAML has it (10× faster), same results
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


@dataclass
class Parsed:
    value: Any
    lines: dict[str, int] = field(default_factory=dict)  # dotted key → line (1-based)
    texts: dict[str, str] = field(default_factory=dict)  # dotted key → the scalar as written

    def __iter__(self):  # `value, lines = read_yaml_file(path)`, as before texts were kept
        return iter((self.value, self.lines))


def _cut(key: str) -> str:
    return key if len(key) <= 40 else key[:39] + "…"


def check_bounds(text: str, where: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or expanding to more than MAX_NODES
    values, from the parser's events alone (each alias counts the whole size of what it
    names, known once that node is complete): linear in the text, nothing constructed."""
    stack: list[list[Any]] = []  # open collections: [anchor, size, is_mapping, children seen, dotted key]
    sizes: dict[str, int] = {}  # anchor → expanded size of its finished node
    pending_key: list[str] = []  # for each open mapping, the key text of the value to come

    def child_key() -> str:
        if not stack:
            return ""
        parent = stack[-1]
        if parent[2]:
            return f"{parent[4]}.{pending_key[-1]}".lstrip(".") if parent[3] % 2 else parent[4]
        return f"{parent[4]}[{parent[3]}]"

    def add(n: int, event: yaml.Event) -> None:
        if not stack:
            return
        parent = stack[-1]
        if parent[2] and parent[3] % 2 == 0:  # a mapping key
            pending_key[-1] = str(getattr(event, "value", "")) if isinstance(event, yaml.ScalarEvent) else "?"
        parent[3] += 1
        parent[1] += n
        if parent[1] > MAX_NODES:
            line = event.start_mark.line + 1
            raise OptcmpError(f"{where}:{line}: {_cut(parent[4]) or '(top level)'}: the document expands to more than "
                              f"{MAX_NODES:,} values (aliases count what they repeat); allowed: at most {MAX_NODES:,}")

    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1, event)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in sizes:
                    if any(s[0] == event.anchor for s in stack):
                        line = event.start_mark.line + 1
                        raise OptcmpError(f"{where}:{line}: {_cut(child_key()) or '(top level)'}: alias *{event.anchor} "
                                          "refers to a value that contains it; allowed: aliases of finished values")
                    line = event.start_mark.line + 1
                    raise OptcmpError(f"{where}:{line}: {_cut(child_key()) or '(top level)'}: alias *{event.anchor} "
                                      f"is not defined; allowed: aliases of anchors (&{event.anchor}) given before them")
                add(sizes[event.anchor], event)
            elif isinstance(event, yaml.CollectionStartEvent):
                key = child_key()
                if len(stack) >= MAX_DEPTH:
                    line = event.start_mark.line + 1
                    raise OptcmpError(f"{where}:{line}: {_cut(key)}: nested more than {MAX_DEPTH} levels deep; "
                                      f"allowed: at most {MAX_DEPTH} levels of mappings and lists")
                stack.append([event.anchor, 1, isinstance(event, yaml.MappingStartEvent), 0, key])
                pending_key.append("")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, size, *_ = stack.pop()
                pending_key.pop()
                if anchor:
                    sizes[anchor] = size
                add(size, event)
    except yaml.YAMLError:
        return  # composing reports the syntax error, with its line


def _walk(node: yaml.Node, prefix: str, parsed: Parsed, where: str) -> None:
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
            parsed.lines.setdefault(dotted, line)
            _walk(value_node, dotted, parsed, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            parsed.lines.setdefault(f"{prefix}[{i}]", item.start_mark.line + 1)
            _walk(item, f"{prefix}[{i}]", parsed, where)
    elif isinstance(node, yaml.ScalarNode) and prefix:
        parsed.texts.setdefault(prefix, str(node.value))


def _tag_problem(problem: str) -> str:
    match = re.search(r"tag '([^']*)'", problem)
    tag = match.group(1).replace("tag:yaml.org,2002:", "!!") if match else "this tag"
    return f"the tag {tag} is not allowed; allowed: plain YAML (mappings, lists, strings, numbers, booleans, null)"


def parse_yaml(text: str, where: str) -> Parsed:
    """Parse one bounded YAML document: its value, a dotted-key → line map and the scalars' texts."""
    check_bounds(text, where)
    try:
        node = yaml.compose(text, Loader=_Loader)
        parsed = Parsed(None)
        if node is not None:
            _walk(node, "", parsed, where)
            loader = _Loader(text)
            try:
                parsed.value = loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if "could not determine a constructor" in str(e):
            problem = _tag_problem(str(e))
        raise OptcmpError(f"{where}{line}: {problem}") from None
    except yaml.YAMLError as e:
        raise OptcmpError(f"{where}: invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return parsed


def read_yaml_file(path: Path) -> Parsed:
    """Read and parse a YAML file of at most MAX_BYTES; a missing or unreadable file is a user error."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # a pipe or /dev/zero has no size to ask first
    except FileNotFoundError:
        raise OptcmpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OptcmpError(f"{path}: is a directory, expected a YAML config file") from None
    except OSError as e:
        raise OptcmpError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise OptcmpError(f"{path}: the file is larger than {MAX_BYTES // 1024} KiB; allowed: config files "
                          f"of at most {MAX_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise OptcmpError(f"{path}: not a text file (byte {e.start} is not UTF-8); allowed: YAML in UTF-8") from None
    return parse_yaml(text, str(path))


def parse_value(text: str, where: str) -> Any:
    """Read a command-line value as YAML (`0.1` → float, `[0,1]` → list, `adam` → str)."""
    return parse_yaml(text, where).value


# libyaml's emitter where PyYAML was built with it: a tenth of the pure-Python one's time,
# which a sweep pays once per run (config.yaml), and the same text.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None)
