"""YAML loading for policy files: line numbers, YAML 1.2 scalars, duplicate keys refused.

* Every mapping is a :class:`Map` (a ``dict``) and every sequence a :class:`Seq` (a
  ``list``) that remember the 1-based line where they start and where each key/item
  starts, so validation errors can say ``policy.yaml:12: rule "x" …``.
* Plain scalars resolve as in YAML 1.2's core schema, like the original engine's
  YAML library: ``yes``/``no``/``on``/``off`` stay strings, ``012`` is twelve, ``1:30``
  and ``2026-01-01`` are strings, only ``true``/``false`` are booleans.
* A key repeated in one mapping is an error (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

__all__ = ["Map", "Seq", "load_yaml", "line_of"]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"


class Map(dict):
    """A YAML mapping with its position: ``line`` and ``key_lines[key]`` (1-based)."""

    line: int | None = None
    key_lines: dict[Any, int]


class Seq(list):
    """A YAML sequence with its position: ``line`` and ``item_lines[i]`` (1-based)."""

    line: int | None = None
    item_lines: list[int]


def line_of(node: Any, key: Any = None) -> int | None:
    """The line of ``key`` (a mapping key or a sequence index) in ``node``, else of ``node``
    itself; None when ``node`` did not come from :func:`load_yaml`."""
    if key is not None:
        if isinstance(node, Map) and key in node.key_lines:
            return node.key_lines[key]
        if isinstance(node, Seq) and isinstance(key, int) and 0 <= key < len(node.item_lines):
            return node.item_lines[key]
    return getattr(node, "line", None)


class _Loader(yaml.SafeLoader):
    pass


_DROPPED = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)
    except ValueError:
        raise ConstructorError(None, None, f"invalid integer {text!r}", node.start_mark) from None


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = Map()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    if not isinstance(node, yaml.MappingNode):  # pragma: no cover - the resolver guarantees it
        raise ConstructorError(None, None, "expected a mapping", node.start_mark)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   "found an unhashable key", key_node.start_mark) from None
        if first is not None:
            raise ConstructorError(None, None, f"duplicate key {key!r} (first defined at line {first})",
                                   key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = Seq()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_constructor(_FLOAT, SafeConstructor.construct_yaml_float)


def load_yaml(text: str) -> Any:
    """Parse one YAML document.

    Raises:
        yaml.YAMLError: syntax errors, duplicate keys, more than one document; a
            ``yaml.MarkedYAMLError`` carries ``problem_mark.line`` (0-based).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
