"""Which code made a cell: a content hash of the modules its components run and the weight files they load.

A cell's numbers come from its settings (``Cell.fingerprint``) and from code. This module
hashes the code, separately from the settings, so the store can tell "other settings" (refused)
from "other code" (stale). What a cell's code is:

- roots: the modules every cell runs (``cell_runner``, ``evaluation``), the modules of the cell's
  generator, prompt set, evaluation metrics (a reward alias used as a metric: that reward's
  module and ``metrics.reward_metric``) and of the feature encoders their configs name; a cell
  that trains adds the shared loop (``training``), its method's module and its training
  reward's module. A preset (``sd-turbo-tiny``) adds the module that registered it; a
  ``package.module:Class`` outside the project adds its own module.
- the closure: every module those import, found statically (``ast``, imports inside functions
  included), within the project's packages and the package of any outside component. Static,
  because the hash is needed before anything is built and because the registry imports every
  built-in module in every run (the modules loaded by a process would tie each cell to every
  method). A cell that does not train never runs ``training``: its closure leaves it out.
  Report, CLI and run-orchestration modules (``EXCLUDED``) are never entered: they cannot
  change a number.
- weight files: what a component's ``weight_files(config)`` names (the shipped
  ``drpo_bench/assets/*.safetensors``, or the file the config points at), hashed by content.

A source file is hashed with its comments, blank lines and trailing spaces left out (found with
``tokenize``, the same in every Python version): a comment or blank line does not stale a store,
every other edit does (docstrings included: they are values at run time).
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import importlib.util
import io
import json
import subprocess
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the project's own top-level packages (the checkout's code)
PROJECT_PACKAGES = ("drpo_bench", "baselines")
#: modules (and packages) that run no cell's numbers: never hashed, their imports never followed
EXCLUDED = (
    "drpo_bench.commands", "drpo_bench.report", "drpo_bench.run.runner", "drpo_bench.run.executors",
    "drpo_bench.run.locks", "drpo_bench.suite.code_hash", "drpo_bench.compute.bench", "drpo_bench.__main__",
)
#: modules every cell runs; the shared training loop for a cell that trains
EVERY_CELL = ("drpo_bench.run.cell_runner", "drpo_bench.run.evaluation")
TRAINING = "drpo_bench.run.training"
#: tracked files under these folders are results, not code: a modified one leaves the tree clean
RESULT_FOLDERS = ("results/", "runs/")
DIGEST = 16  # hex digits kept of each sha256 (64 bits: enough to tell edits apart, short in cell.json)


@dataclass(frozen=True)
class CodeRecord:
    """A cell's code: ``hash`` over ``files`` ({label: digest}); labels are paths relative to the
    checkout, or ``<package>/<path>`` for code outside it."""

    hash: str
    files: dict[str, str]
    commit: str | None = None
    dirty: bool | None = None  # the checkout has modified tracked files (outside results/) or untracked code
    uncommitted: tuple[str, ...] = ()  # covered files that differ from the commit (modified or untracked)
    outside: tuple[str, ...] = field(default_factory=tuple)  # covered files outside the checkout

    def record(self) -> dict[str, Any]:
        return {"hash": self.hash, "commit": self.commit, "dirty": self.dirty, "uncommitted": list(self.uncommitted),
                "outside": list(self.outside), "files": dict(self.files)}


def combine(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:DIGEST]


def changed_files(recorded: dict[str, Any] | None, current: CodeRecord) -> list[str]:
    """Files whose digest differs between a recorded ``code`` entry and ``current`` (also files one of
    them covers and the other not); ["(code not recorded)"] when nothing was recorded."""
    if not recorded or not isinstance(recorded.get("files"), dict):
        return ["(code not recorded)"]
    old: dict[str, str] = recorded["files"]
    return sorted(k for k in set(old) | set(current.files) if old.get(k) != current.files.get(k))


# ---- a cell's code -------------------------------------------------------------------------------


def cell_code(cell: Any) -> CodeRecord:
    """The code hash of ``cell`` as it is on disk now (closures and digests cached: ~0.1 ms a cell)."""
    return _code(cell, with_training=cell.trains)


def evaluation_code(cell: Any) -> CodeRecord:
    """The code hash of what evaluates ``cell``'s generator (generator, prompts, metrics, the cell runner),
    leaving out its method and the training loop: the key of an evaluation shared between methods."""
    return _code(cell, with_training=False)


def _code(cell: Any, with_training: bool) -> CodeRecord:
    roots, tops, weights = _cell_roots(cell, with_training)
    stop = () if with_training else (TRAINING,)
    covered = covered_files(frozenset(roots), frozenset(tops), frozenset(stop), tuple(sorted(set(weights))))
    files = {name: file_digest(path) for name, path in covered if path.is_file()}
    state = git_state()
    outside = tuple(sorted(name for name, path in covered if not _inside(path)))
    uncommitted = tuple(sorted(k for k in files if k in state.changed or k in outside))
    return CodeRecord(combine(files), files, state.commit, state.dirty, uncommitted, outside)


@functools.lru_cache(maxsize=None)
def covered_files(roots: frozenset[str], tops: frozenset[str], stop: frozenset[str],
                  weights: tuple[str, ...], excluded: tuple[str, ...] = EXCLUDED) -> tuple[tuple[str, Path], ...]:
    """(label, path) of the modules in the closure and of the weight (or other extra) files, sorted by label."""
    paths = {module_file(name) for name in closure(roots, tops, stop, excluded)}
    paths |= {Path(p).expanduser().resolve() for p in weights}
    return tuple(sorted((label(p), p) for p in paths if p is not None))


def _cell_roots(cell: Any, with_training: bool = True) -> tuple[set[str], set[str], list[str]]:
    from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS

    roots, tops, weights = set(EVERY_CELL), set(PROJECT_PACKAGES), []  # weights: str paths

    def add(registry: Any, name: str, args: dict[str, Any] | None) -> None:
        entry = registry.get(name)
        for module in (entry.cls.__module__, entry.defined_in):
            if module:
                roots.add(module)
                tops.add(module.split(".")[0])
        config = entry.parse_config(args)
        hook = getattr(entry.cls, "weight_files", None)
        if callable(hook):
            weights.extend(str(p) for p in hook(config))
        _add_nested(config, add)

    add(GENERATORS, cell.generator.name, cell.generator.args)
    if with_training:
        add(METHODS, cell.method.method, cell.method.args)
    add(PROMPTS, cell.prompts.name, cell.prompts.args)
    for metric in cell.eval.metrics:
        if metric.name in cell.eval_rewards:
            spec = cell.eval_rewards[metric.name]
            roots.add("drpo_bench.metrics.reward_metric")
            add(REWARDS, spec.name, spec.args)
        else:
            add(METRICS, metric.name, metric.args)
    if cell.trains and with_training:
        roots.add(TRAINING)
        if cell.reward is not None:
            add(REWARDS, cell.reward.name, cell.reward.args)
    return roots, tops, weights


def _add_nested(config: Any, add: Any) -> None:
    """A config that names another registered component (config.NESTED_COMPONENTS, e.g. DrPO's or
    the diversity metric's feature encoder) brings that component's code too."""
    import drpo_bench.registry as registry
    from drpo_bench.suite.config import NESTED_COMPONENTS

    for name_field, args_field, registry_name in NESTED_COMPONENTS:
        name = getattr(config, name_field, None)
        if isinstance(name, str):
            add(getattr(registry, registry_name), name, getattr(config, args_field, None) or {})


# ---- a result that is not a cell (results/compute: FLOP ledgers, memory plans) --------------------

#: what a compute result's closure never enters: a cell's exclusions less the modules that count
#: FLOPs and memory (``compute.bench``) and the commands that write those results
#: (``commands.flops``, ``commands.memory_plan``), which import no other command module: a
#: result's closure holds its writer (a root) and the commands package's docstring-only __init__
RESULT_EXCLUDED = tuple(e for e in EXCLUDED if e not in ("drpo_bench.compute.bench", "drpo_bench.commands"))


def result_provenance(roots: tuple[str, ...] | list[str], extra_files: tuple[Path | str, ...] | list[Path | str] = (),
                      methods: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Which code made a result that is not a cell: ``{"commit", "dirty", "uncommitted", "code":
    {"hash", "files"}}``. ``files`` are the digests of ``roots``, of the modules of the registered
    ``methods`` that ran (the registry imports them by name, which a static closure does not see)
    and of their static import closure within the project's packages (``RESULT_EXCLUDED`` never
    entered), plus ``extra_files`` (a script, whose own imports are followed too, or a suite file);
    labels and digests as in a cell's ``code``, so ``tests/test_references.py`` can check them
    against the recorded commit."""
    extra = [Path(p).expanduser().resolve() for p in extra_files]
    names = set(roots)
    if methods:
        from drpo_bench.registry import METHODS

        for method in methods:
            entry = METHODS.get(method)
            names |= {m for m in (entry.cls.__module__, entry.defined_in) if m}
    for path in extra:
        if path.suffix == ".py":
            names |= {n for n in imports_of(path, "__main__") if n.split(".")[0] in PROJECT_PACKAGES}
    covered = dict(covered_files(frozenset(names), frozenset(PROJECT_PACKAGES), frozenset(),
                                 tuple(sorted(str(p) for p in extra)), RESULT_EXCLUDED))
    covered = {name: path for name, path in covered.items() if path.is_file()}
    files = {name: file_digest(path) for name, path in covered.items()}
    state = git_state()
    uncommitted = sorted(name for name, path in covered.items() if name in state.changed or not _inside(path))
    return {"commit": state.commit, "dirty": state.dirty, "uncommitted": uncommitted,
            "code": {"hash": combine(files), "files": files}}


# ---- the static import closure -------------------------------------------------------------------


def _excluded(name: str, excluded: tuple[str, ...] = EXCLUDED) -> bool:
    return any(name == e or name.startswith(e + ".") for e in excluded)


@functools.lru_cache(maxsize=None)
def closure(roots: frozenset[str], tops: frozenset[str], stop: frozenset[str] = frozenset(),
            excluded: tuple[str, ...] = EXCLUDED) -> frozenset[str]:
    """``roots`` and every module they import (transitively) whose top-level package is in
    ``tops``; parent packages count (importing ``a.b`` runs ``a/__init__.py``). ``excluded``
    modules are never entered (a cell's: ``EXCLUDED``)."""
    seen: set[str] = set()
    todo = [m for r in roots for m in _with_parents(r)]
    while todo:
        name = todo.pop()
        if name in seen or name in stop or _excluded(name, excluded) or name.split(".")[0] not in tops:
            continue
        path = module_file(name)
        if path is None:
            continue
        seen.add(name)
        todo.extend(m for imported in imports_of(path, name) for m in _with_parents(imported))
    return frozenset(seen)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imports_of(path: Path, name: str) -> frozenset[str]:
    return _imports_of(path, *_stat(path), name)


@functools.lru_cache(maxsize=None)
def _imports_of(path: Path, mtime: int, size: int, name: str) -> frozenset[str]:
    """Every name an ``import`` or ``from ... import`` in the file may bring in (``from a import b``
    gives ``a`` and ``a.b``: ``b`` may be a module); relative imports resolved against ``name``."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return frozenset()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``pkg/mod.py`` or ``pkg/mod/__init__.py``), found from its
    top-level package's location without importing anything; None if there is none."""
    top, _, rest = name.partition(".")
    where = _top_location(top)
    if where is None:
        return None
    origin, locations = where
    if not rest:
        return origin
    for base in locations:
        candidate = Path(base, *rest.split("."))
        for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
            if path.is_file():
                return path.resolve()
    return None


@functools.lru_cache(maxsize=None)
def _top_location(top: str) -> tuple[Path | None, tuple[str, ...]] | None:
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = Path(spec.origin).resolve() if spec.origin and spec.origin.endswith(".py") else None
    locations = tuple(spec.submodule_search_locations or ())
    if origin is None and not locations:
        return None
    return origin, locations


# ---- files ---------------------------------------------------------------------------------------


def _inside(path: Path) -> bool:
    return path == REPO_ROOT or REPO_ROOT in path.parents


@functools.lru_cache(maxsize=None)
def label(path: Path) -> str:
    """A machine-independent name: relative to the checkout, else ``<top package>/<path>``."""
    path = path.resolve()
    if _inside(path):
        return path.relative_to(REPO_ROOT).as_posix()
    for parent in path.parents:  # the folder holding the top-level package (a sys.path entry)
        if not (parent / "__init__.py").is_file():
            return path.relative_to(parent).as_posix()
    return path.name


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def file_digest(path: Path) -> str:
    return _file_digest(path, *_stat(path))


@functools.lru_cache(maxsize=None)
def _file_digest(path: Path, mtime: int, size: int) -> str:
    data = path.read_bytes()
    if path.suffix == ".py":
        data = code_text(data)
    return hashlib.sha256(data).hexdigest()[:DIGEST]


def code_text(source: bytes) -> bytes:
    """Python source without comments, blank lines and trailing spaces (lines inside a multi-line
    string are kept as they are: they are a value)."""
    lines = source.decode("utf-8", errors="surrogateescape").splitlines()
    protected: set[int] = set()  # 0-based lines inside a string token that spans lines
    try:
        for token in tokenize.tokenize(io.BytesIO(source).readline):
            if token.type == tokenize.COMMENT:
                row, col = token.start
                lines[row - 1] = lines[row - 1][:col]
            elif token.start[0] != token.end[0]:
                protected.update(range(token.start[0], token.end[0]))  # rows after the first
    except (tokenize.TokenError, SyntaxError, IndexError):
        return source  # not valid Python: hash it as it is
    kept = [line if i in protected else line.rstrip() for i, line in enumerate(lines)]
    return "\n".join(line for i, line in enumerate(kept) if i in protected or line).encode("utf-8", errors="surrogateescape")


# ---- the checkout's git state --------------------------------------------------------------------


@dataclass(frozen=True)
class GitState:
    commit: str | None  # HEAD, None when this is not a git checkout
    changed: frozenset[str]  # paths (relative to the checkout) modified, added or untracked
    dirty_files: tuple[str, ...]  # what makes the tree dirty: modified tracked files outside results/, untracked code

    @property
    def dirty(self) -> bool | None:
        return None if self.commit is None else bool(self.dirty_files)

    def describe(self) -> str | None:
        """``<commit>`` or ``<commit>-dirty`` (None outside git)."""
        return None if self.commit is None else self.commit + ("-dirty" if self.dirty_files else "")


@functools.lru_cache(maxsize=1)
def git_state() -> GitState:
    """HEAD and the changed files of the checkout (once per process; ``refresh()`` reads it again)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        status = git("status", "--porcelain=v1", "-z", "--untracked-files=all")
    except (OSError, subprocess.TimeoutExpired):
        return GitState(None, frozenset(), ())
    if head.returncode or top.returncode or status.returncode:
        return GitState(None, frozenset(), ())
    toplevel = Path(top.stdout.strip()).resolve()
    entries = status.stdout.split("\0")
    changed, dirty, i = set(), [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":
            i += 1  # a rename's source path follows
        absolute = (toplevel / path).resolve()
        if not _inside(absolute):
            continue
        rel = absolute.relative_to(REPO_ROOT).as_posix()
        changed.add(rel)
        if code == "??":
            if rel.split("/")[0] in PROJECT_PACKAGES:  # untracked code the hash may cover
                dirty.append(rel)
        elif not rel.startswith(RESULT_FOLDERS):
            dirty.append(rel)
    return GitState(head.stdout.strip(), frozenset(changed), tuple(sorted(dirty)))


def refresh() -> None:
    """Forget cached git state and closures (a long-lived process that edits code between runs)."""
    for cached in (git_state, closure, covered_files, module_file, label, _imports_of, _top_location):
        cached.cache_clear()


# ---- command line (run, tune) --------------------------------------------------------------------


def add_stale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rerun-stale", action="store_true",
                        help="retrain the cells made by other code than this checkout's (the others are kept)")
    parser.add_argument("--keep-stale", action="store_true",
                        help="keep the cells made by other code; the report marks them (default: stop and name them)")


def stale_policy(args: argparse.Namespace) -> str:
    """--rerun-stale / --keep-stale -> what a run does with cells made by other code (runner.check_stale)."""
    from drpo_bench.errors import UserError

    if getattr(args, "rerun_stale", False) and getattr(args, "keep_stale", False):
        raise UserError("--rerun-stale retrains the cells made by other code and --keep-stale keeps them: pass one")
    return "rerun" if getattr(args, "rerun_stale", False) else "keep" if getattr(args, "keep_stale", False) else "stop"
