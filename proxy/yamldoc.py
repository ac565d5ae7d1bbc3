"""JSON-shaped YAML files (the routing table, Kubernetes manifests) loaded safely.

libyaml parses them fast, but its recursion is unbounded (a deeply nested file crashes the interpreter) and
PyYAML silently keeps the last of two duplicate keys (kubectl refuses such a file; in a routing table the
second upstream of one name would win unseen). Both are refused here. The factory imports this module for
its manifests; the proxy never imports the factory.
"""

from __future__ import annotations

import errno
import re
import stat
from pathlib import Path
from typing import Any, Optional

import yaml

# Indentation plus open brackets can only over-count the nesting, so the bound is checked from the text.
MAX_NESTING = 200


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loading of JSON-shaped YAML: string keys only, and no duplicates (PyYAML would silently
    keep the last one; kubectl refuses the file). The checks below can then treat every key as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            problem = "duplicate key" if key in seen else None if isinstance(key, str) else "non-string key"
            if problem:
                raise yaml.constructor.ConstructorError(None, None, f"{problem} {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _UniqueKeyLoader.construct_mapping)


def read_regular_file(path: Path) -> str:
    """A regular file's UTF-8 text. A FIFO would block the reader until a writer comes, a device might never
    end: those raise OSError before anything is read (UnicodeDecodeError for a file that is not UTF-8)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file" if not path.is_dir() else "is a directory", str(path))
    return path.read_text(encoding="utf-8")


class NestingError(yaml.YAMLError):
    pass


def load_documents(text: str) -> list[Any]:
    """Every document of a file; NestingError before libyaml would recurse too deep."""
    _check_nesting(text)
    return list(yaml.load_all(text, Loader=_UniqueKeyLoader))


def _check_nesting(text: str) -> None:
    line = nesting_line(text, MAX_NESTING)
    if line is not None:
        raise NestingError(f"nested deeper than {MAX_NESTING} levels at line {line}")


def nesting_line(text: str, bound: int) -> Optional[int]:
    """The line where the nesting of `text` may exceed `bound` (an over-count: indentation plus open brackets),
    or None when it certainly does not."""
    indent = max((m.end() - m.start(), m.start()) for m in re.finditer(r"^[ \t?:-]*", text, flags=re.MULTILINE))
    depth, deepest, where = 0, 0, 0
    if text.count("[") + text.count("{") + indent[0] > bound:
        for bracket in re.finditer(r"[\[\]{}]", text):
            depth += 1 if bracket.group() in "[{" else -1
            if depth > deepest:
                deepest, where = depth, bracket.start()
    if deepest + indent[0] <= bound:
        return None
    at = where if deepest > indent[0] else indent[1]
    return text.count("\n", 0, at) + 1
