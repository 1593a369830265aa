"""Reading YAML (and JSON) files that users give: bounded in size, with every failure naming the file.

PyYAML's safe loader builds an alias (``*a``) as a reference to the value its anchor (``&a``) made, so a
700-byte file of nested aliases (the "billion laughs") loads in microseconds as a value that stands for
billions of items; anything that walks it (a copy, a check, the ``repr`` in an error message) never ends.
:class:`BoundedLoader` counts the nodes the document stands for, aliases expanded, before building any value,
and refuses past :data:`MAX_NODES`; :func:`read_yaml` also refuses files over :data:`MAX_BYTES`, files that are
not UTF-8 text, and values Python cannot build (integers over its digit limit), each naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_NODES", "BoundedLoader", "YAMLFileError", "YAMLLimitError", "expanded_size",
           "load_yaml_string", "load_yaml_text", "problem", "read_text", "read_yaml"]

# Option and config files are a few KiB with a few hundred values; these bounds are far above any real one.
MAX_BYTES = 1 << 20
MAX_NODES = 100_000


class YAMLLimitError(yaml.YAMLError):
    """A YAML document larger than the bounds (file size, nodes with aliases expanded), or one whose alias
    refers to a node that holds it."""


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many nodes the document ``root`` stands for with every alias expanded; :class:`YAMLLimitError` past
    ``limit`` or for an alias inside the node it refers to (a value that holds itself).

    Each node is counted once however often aliases repeat it (the nodes form a DAG), so this is fast even for
    documents that expand to billions of values.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > limit:
                raise YAMLLimitError(
                    f"the document stands for more than {limit:,} values once its aliases (*name) are expanded "
                    f"(the one starting at line {node.start_mark.line + 1} alone for {sizes[key]:,}); "
                    "refusing it (nested aliases like this are a 'billion laughs' attack)")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YAMLLimitError(f"an alias refers to a value that holds it (line {node.start_mark.line + 1}); "
                                 "such a value would never end")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a document of more than ``max_nodes`` nodes with its aliases expanded
    (:func:`expanded_size`), before it builds any value."""

    max_nodes: int = MAX_NODES

    def construct_document(self, node: yaml.Node) -> Any:
        expanded_size(node, self.max_nodes)
        return super().construct_document(node)


class YAMLFileError(ValueError):
    """A YAML/JSON file that cannot be read: too large, not UTF-8 text, not valid YAML, past the bounds of
    :class:`BoundedLoader`, or holding a value Python cannot build. ``path`` names it, ``detail`` says why."""

    def __init__(self, path: str | Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


def problem(exc: BaseException, what: str = "file") -> str | None:
    """What is wrong, in a sentence, when ``exc`` is an error of loading YAML (see :func:`load_yaml_text`);
    None for any other exception."""
    if isinstance(exc, YAMLLimitError):
        return str(exc)
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {exc}"
    if isinstance(exc, RecursionError):
        return f"the {what} is nested too deeply to be read"
    if isinstance(exc, ValueError):  # int("9" * 5000): more digits than sys.get_int_max_str_digits()
        return f"the {what} holds a value that cannot be read ({exc})"
    return None


def load_yaml_text(text: str, loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """The value of one YAML document (``yaml.safe_load`` with the bounds of ``loader``).

    Raises ``yaml.YAMLError`` (:class:`YAMLLimitError` past the bounds), ValueError for a value Python cannot
    build (an integer of more digits than ``sys.get_int_max_str_digits``) and RecursionError for a document
    nested deeper than Python's stack; :func:`problem` says any of them in words.
    """
    instance = loader(text)
    try:
        return instance.get_single_data()
    finally:
        instance.dispose()


def load_yaml_string(text: str, source: str | Path, what: str = "file",
                     loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """:func:`load_yaml_text` with every failure a :class:`YAMLFileError` naming ``source``."""
    try:
        return load_yaml_text(text, loader)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise YAMLFileError(source, problem(exc, what) or str(exc)) from None


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The text of the YAML/JSON file ``path``: FileNotFoundError when it is missing, :class:`YAMLFileError` when
    it is not a regular file, cannot be read, is larger than ``max_bytes`` or is not UTF-8 text."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise YAMLFileError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    if not path.is_file():
        raise YAMLFileError(path, f"the {what} is not a regular file")
    if size > max_bytes:
        raise YAMLFileError(path, f"the {what} is {size:,} bytes, more than the {max_bytes:,} a YAML/JSON file "
                                  "may have")
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise YAMLFileError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise YAMLFileError(path, f"the {what} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                                  f"{exc.start}): a binary file?") from None


def read_yaml(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES,
              loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """The value of the YAML (or JSON) file ``path`` (:func:`read_text`, then :func:`load_yaml_string`).

    Raises FileNotFoundError when it is missing and :class:`YAMLFileError` (a ValueError) naming the file for
    every other failure.
    """
    return load_yaml_string(read_text(path, what, max_bytes), path, what, loader)
