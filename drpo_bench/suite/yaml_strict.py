"""Strict, bounded YAML for suite files, and checks for names that become folder names.

``yaml.safe_load`` is safe from code execution but not from two other failures:

- a key written twice in one mapping is accepted silently and the last one wins, so a method
  entry with ``method:`` twice runs one method under another's label;
- aliases (``*name``) share one node, so a few hundred bytes of nested anchors ("billion
  laughs") stand for 10^9 nodes; PyYAML itself only builds shared references, but everything
  that walks the data afterwards (the line index, pydantic, a JSON dump) expands them.

``load_yaml(text, source)`` composes the text once with a ``SafeLoader`` subclass, checks the
node tree (size, depth, aliases, duplicate keys) before any Python object is built, and then
constructs the data from that same tree. It returns ``(data, node)``; ``node`` is the composed
tree (``None`` for an empty document) for line numbers. The data equals ``yaml.safe_load``'s,
except that each alias is a separate copy rather than a reference to one shared object. Anchors and aliases stay usable
(``args: &drpo {...}`` ... ``args: *drpo``), and so do merge keys (``<<: *drpo``), under the
same bounds: a merge never adds more than the node count it is charged for. Note that
constructing a mapping with a merge key rewrites that mapping node in place (PyYAML's
``flatten_mapping``): the merged pairs come first, with the lines where they were written.

Errors are ``ConfigError`` naming ``source`` and a line; YAML syntax errors stay
``yaml.YAMLError`` so the caller's existing syntax-error message applies.

``safe_name(value, what)`` and ``ensure_inside(root, path)`` guard ids and aliases that become
folder names, and paths built from them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from drpo_bench.errors import ConfigError, UserError

# ---- limits (each with the reason for its value) ------------------------------------------

MAX_BYTES = 256 << 10  # 256 KiB: shipped suites are under 3 KiB; PyYAML's pure-Python parser reads ~0.5 MiB/s
MAX_FILE_NODES = 20_000  # values written in the file: a suite has a few hundred; PyYAML composes ~30k/s
MAX_NODES = 100_000  # values once aliases are expanded: what pydantic and the line index walk; ~0.1 s each
MAX_DEPTH = 50  # nesting after expanding aliases: the suite schema nests 5 levels; keeps recursion far from Python's limit
MAX_ALIAS_DEPTH = 8  # aliases inside aliased blocks along one path: a suite needs 1; deeper chains only multiply

MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while composing and records every alias edge.

    PyYAML's composer recurses once per nesting level, so a deep ``[[[[...]]]]`` would end in
    RecursionError (a traceback, not a YAML error); counting levels here stops it first.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0  # current nesting while composing
        self.nodes = 0  # nodes composed so far (each alias counts 0 here; the checker charges it)
        # (id(parent node), id(aliased node)) -> line of the first `*alias` making that edge
        self.alias_edges: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            node = super().compose_node(parent, index)
            self.alias_edges.setdefault((id(parent), id(node)), line)
            return node
        self.nodes += 1
        if self.nodes > MAX_FILE_NODES:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(
                f"{self.source}, line {line}: more than {MAX_FILE_NODES} values in one file; "
                "a suite has hundreds: keep data (prompts, weights) in separate files it names"
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(
                f"{self.source}, line {line}: nesting deeper than {MAX_DEPTH} levels; "
                "a suite nests a few levels, so flatten this value"
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Checker:
    """One pass over the composed tree, each distinct node once (aliases share nodes).

    For every node it computes, from its children, the size, height and alias depth the node
    has once aliases are expanded, refusing cycles and anything over the limits; sizes are capped
    at MAX_NODES + 1, so the numbers stay small however large the expansion would be.
    """

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.source = loader.source
        self.done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (size, height, alias depth)
        self.active: set[int] = set()  # nodes on the current path, to find recursive aliases

    def error(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.source}, line {line}: {message}")

    def _too_deep(self, line: int) -> ConfigError:
        return self.error(
            line,
            f"with its aliases expanded this value nests deeper than {MAX_DEPTH} levels; "
            "a suite nests a few levels, so flatten it",
        )

    def _too_many_hops(self, line: int) -> ConfigError:
        return self.error(
            line,
            f"aliases nested more than {MAX_ALIAS_DEPTH} deep (an alias to a block that holds an alias to "
            "a block that ...); a suite needs one level, e.g. `args: &drpo {...}` then `args: *drpo`",
        )

    def visit(self, node: yaml.Node, depth: int, hops: int, alias_line: int | None) -> tuple[int, int, int]:
        """(expanded size, expanded height, alias depth below) of ``node``, reached at ``depth``."""
        where = alias_line or _line(node)
        # checked before descending too, so the recursion here stays within MAX_DEPTH levels
        if depth > MAX_DEPTH:
            raise self._too_deep(where)
        if hops > MAX_ALIAS_DEPTH:
            raise self._too_many_hops(where)
        key = id(node)
        if key in self.active:
            raise self.error(
                alias_line or _line(node),
                "this alias refers to a block that contains it (a recursive alias); "
                "suite values must be finite trees",
            )
        if key not in self.done:
            self.active.add(key)
            try:
                self.done[key] = self._measure(node, depth, hops)
            finally:
                self.active.discard(key)
        size, height, alias_depth = self.done[key]
        if depth + height > MAX_DEPTH:
            raise self._too_deep(where)
        if hops + alias_depth > MAX_ALIAS_DEPTH:
            raise self._too_many_hops(where)
        if size > MAX_NODES:
            raise self.error(
                _line(node),
                f"with its aliases (`*name`) expanded this value has more than {MAX_NODES} nodes; "
                "suite files are limited so that no file can exhaust time or memory: "
                "write the values out or alias smaller blocks",
            )
        return size, height, alias_depth

    def _measure(self, node: yaml.Node, depth: int, hops: int) -> tuple[int, int, int]:
        if isinstance(node, yaml.ScalarNode):
            return 1, 0, 0
        if isinstance(node, yaml.MappingNode):
            self._check_duplicate_keys(node)
            children = [child for pair in node.value for child in pair]
        else:
            children = list(node.value)
        size, height, alias_depth = 1, 0, 0
        for child in children:
            alias_line = self.loader.alias_edges.get((id(node), id(child)))
            is_alias = alias_line is not None
            c_size, c_height, c_alias = self.visit(child, depth + 1, hops + is_alias, alias_line)
            size = min(size + c_size, MAX_NODES + 1)
            height = max(height, c_height + 1)
            alias_depth = max(alias_depth, c_alias + is_alias)
            if size > MAX_NODES:
                break  # the caller refuses it; no need to look further
        return size, height, alias_depth

    def _check_duplicate_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a collection as key: the constructor refuses it (unhashable)
            if key_node.tag == MERGE_TAG:
                ident: Any = (MERGE_TAG,)  # two `<<:` in one mapping: write `<<: [*a, *b]` instead
            else:
                # the constructed value, as the dict sees it: `1`, `0x1` and `true` are one key, "1" another
                ident = self.loader.construct_object(key_node)
            if ident in seen:
                raise self.error(
                    _line(key_node),
                    f"duplicate key `{key_node.value}` (first at line {seen[ident]}); "
                    "each key may appear once in a mapping",
                )
            seen[ident] = _line(key_node)


def load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document strictly: ``(data, composed node tree)``; ``(None, None)`` if empty.

    Raises ``ConfigError`` (naming ``source`` and a line) for a file over ``MAX_BYTES``, a
    duplicate key, a recursive alias, or aliases/nesting beyond ``MAX_NODES``, ``MAX_DEPTH`` or
    ``MAX_ALIAS_DEPTH``, or more than ``MAX_FILE_NODES`` values written, all before any Python
    object is built; ``yaml.YAMLError`` for YAML
    syntax errors. The data equals ``yaml.safe_load(text)`` for every file it accepts, with no
    object shared between two places (each alias is its own copy).
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise ConfigError(
            f"{source}: the file is {size} bytes, over the {MAX_BYTES}-byte limit for YAML suite files; "
            "a suite is a few KiB: keep data (prompts, weights) in separate files it names"
        )
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _Checker(loader).visit(node, 0, 0, None)
        loader.constructed_objects = {}  # built while checking keys: construct_document starts clean
        data = _unshare(loader.construct_document(node))
    finally:
        loader.dispose()
    return data, node


def _unshare(value: Any) -> Any:
    """A copy in which every alias is its own object (PyYAML gives one shared object per anchor).

    Without it, an override such as ``methods.1.args.n_pos=2`` on a block written ``args: &drpo``
    would also change every ``args: *drpo``. The checks above bound the copy to MAX_NODES values
    and MAX_DEPTH levels of recursion.
    """
    if isinstance(value, dict):
        return {key: _unshare(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshare(item) for item in value]
    if isinstance(value, set):
        return set(value)
    return value


def read_yaml_file(path: str | Path, source: str | None = None) -> tuple[Any, yaml.Node | None]:
    """``load_yaml`` on a file, refusing one over ``MAX_BYTES`` before reading it into memory."""
    path = Path(path)
    source = str(path) if source is None else source
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(
            f"{source}: the file is {size} bytes, over the {MAX_BYTES}-byte limit for YAML suite files; "
            "a suite is a few KiB: keep data (prompts, weights) in separate files it names"
        )
    return load_yaml(path.read_text(encoding="utf-8"), source)


# ---- names that become folder names ---------------------------------------------------------

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
MAX_NAME_LENGTH = 100  # well under the 255-byte file-name limit of common file systems, with room for suffixes


def safe_name(value: str, what: str) -> str:
    """``value`` if it is safe as one folder name, else ``ConfigError`` naming ``what`` (e.g. "method id").

    Allowed: 1-100 characters, letters, digits and ``_ . + -``, starting with a letter or digit,
    with no ``..`` (so no ``/``, no absolute path, no parent folder).
    """
    allowed = (
        f"use 1-{MAX_NAME_LENGTH} characters from letters, digits and `_ . + -`, starting with a letter "
        "or digit, with no `..` and no `/`"
    )
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string; {allowed} (got {value!r})")
    problem = None
    if not value:
        problem = "is empty"
    elif len(value) > MAX_NAME_LENGTH:
        problem = f"is {len(value)} characters long"
    elif ".." in value:
        problem = "contains `..`"
    elif Path(value).is_absolute() or "/" in value or "\\" in value:
        problem = "is a path, not a name"
    elif not SAFE_NAME.fullmatch(value):
        problem = "has characters that are not allowed"
    if problem:
        raise ConfigError(f"{what} {value!r} {problem}: it becomes a folder name, so {allowed}")
    return value


def ensure_inside(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed), or ``UserError`` if it lies outside ``root``.

    A relative ``path`` is taken relative to ``root``. Parts that do not exist yet are fine:
    only existing symlinks can redirect, and ``resolve`` follows those.
    """
    root_resolved = Path(root).resolve()
    path = Path(path)
    full = (path if path.is_absolute() else root_resolved / path).resolve()
    if full != root_resolved and not full.is_relative_to(root_resolved):
        raise UserError(
            f"path {path} resolves to {full}, outside {root_resolved}; "
            "ids and names must not lead out of the output folder (no `..`, no absolute paths, no symlinks out)"
        )
    return full
