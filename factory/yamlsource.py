"""Load YAML while remembering where every value came from.

PyYAML's safe loader forgets line numbers and silently keeps the last of two duplicate keys.
Users editing models.yaml in a merge request need `file:line:col` for every problem and a
loud error for a duplicated key, so we walk the composed node tree ourselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from factory.errors import CatalogError, Problem
from proxy.yamldoc import nesting_line

PathPart = Union[str, int]
YamlPath = tuple[PathPart, ...]

MAX_NODES = 2_000_000  # aliases can make a small file expand exponentially ("billion laughs")
MAX_BYTES = 20 * 1024 * 1024
MAX_DEPTH = 64  # the catalog's schema needs 6; Python's recursion limit is hit near 300
REWORDED_CHARACTERS = 256 * 1024  # the Python composer takes ~5 s for this much
PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
TAG_HINT = "remove the tag; models.yaml takes plain strings, numbers, lists and mappings"


def format_path(path: YamlPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class SourceMap:
    """Positions (1-based line, column) of values and of the keys that hold them."""

    file: str
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: YamlPath, prefer_key: bool = False) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            table = (self.keys, self.values) if prefer_key and end == len(path) else (self.values,)
            for positions in table:
                if prefix in positions:
                    return positions[prefix]
        return (1, 1)

    def prefixed(self, prefix: YamlPath) -> "SourceMap":
        """The same positions, for a document that is re-rooted under `prefix`."""
        shifted = SourceMap(self.file)
        shifted.values = {prefix + path: position for path, position in self.values.items()}
        shifted.keys = {prefix + path: position for path, position in self.keys.items()}
        return shifted

    def problem(self, path: YamlPath, message: str, hint: str | None = None, *,
                prefer_key: bool = False, shown_path: str | None = None) -> Problem:
        line, column = self.locate(path, prefer_key)
        return Problem(self.file, line, column, shown_path if shown_path is not None else format_path(path),
                       message, hint)


class _Walker:
    def __init__(self, source: SourceMap):
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # problems that do not stop validation of the rest
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")

    def _position(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def walk(self, node: yaml.Node, path: YamlPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge()
        self.source.values[path] = self._position(node)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in PLAIN_COLLECTION_TAGS:
            self._report(node, path, f"unsupported YAML tag {node.tag!r}", TAG_HINT)
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, path + (index,)) for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict:
        result: dict = {}
        first_seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._report(key_node, path, "mapping keys must be plain strings")
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._report(key_node, path, "YAML merge keys (<<) are not supported",
                             "put shared settings under `defaults:` instead")
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                key = key_node.value  # `1: x`, `yes: x` or `~: x`, as written: the schema rejects unknown keys
            line, column = self._position(key_node)
            if key in first_seen:
                self.warnings.append(Problem(
                    self.source.file, line, column, format_path(path + (key,)),
                    f"duplicate key '{key}' (first at line {first_seen[key]})",
                    "keep only one of them"))
                continue
            first_seen[key] = line
            self.source.keys[path + (key,)] = (line, column)
            result[key] = self.walk(value_node, path + (key,))
        return result

    def _scalar(self, node: yaml.Node, path: YamlPath) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            self._report(node, path, f"unsupported YAML tag {node.tag!r}", TAG_HINT)
            return None

    def _report(self, node: yaml.Node, path: YamlPath, message: str, hint: str | None = None) -> None:
        line, column = self._position(node)
        self.problems.append(Problem(self.source.file, line, column, format_path(path), message, hint))


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


class _TooLarge(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        super().__init__()
        self.line, self.column = mark.line + 1, mark.column + 1


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes recursively: stop at MAX_DEPTH, long before Python's recursion limit would."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> list[yaml.Node]:
    """libyaml composes several times faster than PyYAML's Python composer (`factory validate` of 20,000 models:
    7 s against 29 s on a shared machine), but it recurses without bound. So it composes only text whose nesting is
    certainly within MAX_DEPTH.
    Its syntax errors are at the same place as the Python composer's, worded more tersely ("did not find expected
    ','" for "expected ',', but got '<stream end>'"): a file small enough to compose again in moments gets the
    Python composer's words. A bad character is always the Python reader's to report: it finds one before
    composing anything, and counts characters where libyaml counts bytes."""
    if _FAST_LOADER is not None and nesting_line(text, MAX_DEPTH) is None:
        try:
            return list(yaml.compose_all(text, Loader=_FAST_LOADER))
        except yaml.reader.ReaderError:
            pass
        except yaml.YAMLError:
            if len(text) > REWORDED_CHARACTERS:
                raise
    return list(yaml.compose_all(text, Loader=_DepthLimitedLoader))


def load_located(text: str, file: str) -> tuple[Any, SourceMap, list[Problem], bool]:
    """Parse YAML into plain values, a SourceMap, problems found on the way, and whether they are fatal.

    Duplicate keys are not fatal (the first wins, so the rest can still be checked); an unsupported
    tag is. Raises CatalogError when there is no document to walk at all.
    """
    source = SourceMap(file)
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise CatalogError([Problem(file, 0, 0, "", f"file is larger than {MAX_BYTES // 2**20} MiB",
                                    "split the catalog or generate it with matrix entries")])
    try:
        documents = _compose(text)
    except _TooDeep as exc:
        raise CatalogError([Problem(file, exc.line, exc.column, "", f"nested deeper than {MAX_DEPTH} levels",
                                    "models.yaml needs a handful of levels: flatten the nesting")]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise CatalogError([Problem(file, line, column, "", f"YAML syntax error: {exc.problem}",
                                    "check indentation and quoting around this line")]) from exc
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        line, column = text.count("\n", 0, exc.position) + 1, exc.position - text.rfind("\n", 0, exc.position)
        raise CatalogError([Problem(file, line, column, "", f"not a text file: character #x{code:04x} is not "
                                    "allowed in YAML", "is this the right file?")]) from exc
    except yaml.YAMLError as exc:
        raise CatalogError([Problem(file, 0, 0, "", "YAML syntax error: " + " ".join(str(exc).split()))]) from exc
    if len(documents) != 1:
        raise CatalogError([Problem(file, 1, 1, "", f"expected exactly one YAML document, found {len(documents)}",
                                    "remove extra `---` separators" if documents else "add models to the file")])
    walker = _Walker(source)
    try:
        value = walker.walk(documents[0], ())
    except _TooLarge as exc:
        raise CatalogError([Problem(file, 1, 1, "", f"document expands to more than {MAX_NODES:,} nodes",
                                    "avoid deeply nested YAML aliases")]) from exc
    return value, source, walker.problems + walker.warnings, bool(walker.problems)
