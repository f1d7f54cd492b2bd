"""Reading a study file's YAML: no key given twice, and the line of every key.

PyYAML keeps the last of two equal keys in a mapping and says nothing, so a study
file with ``train:`` twice (or ``epochs:`` twice inside it) would silently lose the
first. ``load`` refuses that, at any depth, naming the key and both lines. Merge keys
(``<<: *defaults``) still let a mapping override what it merges: only keys written
out twice in one mapping are refused.
"""

from __future__ import annotations

from typing import Any

import yaml

from rest.errors import SpaceError


class DuplicateKey(yaml.constructor.ConstructorError):
    """One mapping of a YAML document gives a key twice."""

    def __init__(self, key: str, first: yaml.Mark, again: yaml.Mark):
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1  # key: as written


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings refuse a key given twice (equal once constructed: 1 and 1.0 alike)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(str(key_node.value), seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
        return super().construct_mapping(node, deep)


def load(text: str) -> Any:
    """The YAML document in `text`, refusing duplicate keys (``DuplicateKey``) and other YAML errors."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml(text: str, source: str, unique_keys: bool = True) -> tuple[yaml.Node | None, Any]:
    """(composed node, for key lines; the document) of a study file, or SpaceError naming the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return node, load(text) if unique_keys else yaml.safe_load(text)
    except DuplicateKey as exc:
        path = path_at(key_lines(node), exc.line, exc.key)
        raise SpaceError(
            f"{source}:{exc.line}: '{path}' is given twice (first on line {exc.first_line}); YAML would keep "
            f"only the last silently: keep one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpaceError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Dotted key path -> 1-based YAML line (of its last occurrence), for error messages."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}{key.value}"
            out[path] = key.start_mark.line + 1
            out.update(key_lines(value, path + "."))
    return out


def path_at(lines: dict[str, int], line: int, key: str) -> str:
    """The dotted path of `key` (as written) on `line` (the key itself if no path matches)."""
    paths = [p for p, n in lines.items() if n == line and (p == key or p.endswith(f".{key}"))]
    return min(paths, key=len) if paths else key
