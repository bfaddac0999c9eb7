"""Reading YAML and JSON that may be hostile: bounded size, nesting and alias expansion, strict UTF-8.

Every spec, suite, preset, run record and leaderboard entry is read through here (issue 30), because a
600-byte YAML "billion laughs" loads in microseconds (its aliases share one object) and then hangs
whatever walks it (``repr``, pydantic, ``json.dumps``), and a document nested ~1000 deep ends in
``RecursionError`` wherever it is walked. So, before anything builds or walks a document:

- the file is at most ``max_bytes`` and decodes as UTF-8 (byte and offset named otherwise);
- YAML is scanned as an event stream (PyYAML's parser keeps its own stack, so the scan itself never
  recurses): the nesting depth and the number of nodes *after alias expansion* are counted, each
  alias counting as the whole node it names, and a document over ``MAX_DEPTH`` or ``MAX_NODES`` is
  refused before it is constructed;
- JSON is parsed (``RecursionError`` becomes a message) and its depth checked without recursion.

Errors are ``DocumentError`` (a ``ValueError``) whose message starts with the file; callers re-raise
them as their own error class (``SpecError``, ``DamagedRecordError``, ``EntryError``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DocumentError", "read_text", "parse_yaml", "parse_json", "load_yaml_file", "check_depth"]

MAX_BYTES = 1 << 20  # specs, suites and records are a few KiB (metrics.jsonl has its own limit)
MAX_DEPTH = 64  # the deepest real document (a suite, a final.json) nests 6 levels
MAX_NODES = 200_000  # after alias expansion; the largest real document has ~2,000


class DocumentError(ValueError):
    """A file that is not a safe document; the message starts with the file."""


def read_text(path: Path | str, max_bytes: int = MAX_BYTES) -> str:
    """The file's text: a regular file, at most ``max_bytes``, strict UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DocumentError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    size = path.stat().st_size
    if size > max_bytes:
        raise DocumentError(f"{path}: {size} bytes, more than the {max_bytes} bytes allowed")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
        ) from None


def _scan_yaml(text: str, source: str, loader: type) -> None:
    """Refuse a YAML document nested deeper than MAX_DEPTH or larger than MAX_NODES once its aliases
    are expanded, from the event stream alone (nothing is constructed)."""
    size: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, height) of the node it names
    stack: list[list[Any]] = []  # open collections: [anchor, nodes so far, height so far]

    def deep(height: int) -> None:
        if len(stack) + height > MAX_DEPTH:
            raise DocumentError(f"{source}: nested deeper than {MAX_DEPTH} levels")

    def add(nodes: int, height: int) -> None:  # a finished child node of the innermost collection
        deep(height)
        if stack:
            stack[-1][1] += nodes
            stack[-1][2] = max(stack[-1][2], height + 1)
            if stack[-1][1] > MAX_NODES:
                raise DocumentError(f"{source}: more than {MAX_NODES} values once its aliases are expanded "
                                    "(an alias bomb?)")  # fmt: skip

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1, 0])
            deep(0)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes, height = stack.pop()
            if anchor:
                size[anchor] = (nodes, height)
            add(nodes, height)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                size[event.anchor] = (1, 0)
            add(1, 0)
        elif isinstance(event, yaml.AliasEvent):
            add(*size.get(event.anchor, (1, 0)))  # an unknown anchor: the loader names it below


def parse_yaml(text: str, source: str, loader: type = yaml.SafeLoader) -> Any:
    """A YAML document from ``text`` after the depth and expansion checks; ``DocumentError`` naming
    ``source`` for any problem."""
    try:
        _scan_yaml(text, source, loader)
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        raise DocumentError(f"{source}: not valid YAML: {' '.join(str(e).split())}"[:400]) from None
    except RecursionError:  # the scan bounds depth; kept for a loader that recurses differently
        raise DocumentError(f"{source}: nested too deeply") from None
    except DocumentError:
        raise
    except ValueError as e:  # an integer longer than Python converts (4300 digits)
        raise DocumentError(f"{source}: {' '.join(str(e).split())}"[:200]) from None


def check_depth(value: Any, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """``value`` itself, after checking that its lists and dicts nest at most ``max_depth`` deep
    (an explicit stack: the check must not be what overflows)."""
    todo = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > max_depth:
                    raise DocumentError(f"{source}: nested deeper than {max_depth} levels")
                todo.append((child, depth + 1))
    return value


def parse_json(text: str, source: str, **kwargs: Any) -> Any:
    """A JSON document, its depth checked; ``kwargs`` go to ``json.loads`` (hooks)."""
    try:
        return check_depth(json.loads(text, **kwargs), source)
    except RecursionError:
        raise DocumentError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise DocumentError(
            f"{source}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None


def load_yaml_file(path: Path | str, loader: type = yaml.SafeLoader, max_bytes: int = MAX_BYTES) -> Any:
    return parse_yaml(read_text(path, max_bytes), str(path), loader)
