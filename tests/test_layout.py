"""The package's folders follow the flow, and imports only go down it.

``LAYERS`` lists the package's units from the bottom up: the top-level modules and the folders of
``drpo_bench/``, and ``baselines/``. A module may import its own unit and the units below it; an
import of a unit above is a back edge and fails here, unless ``EXCEPTIONS`` names it with its
reason. Imports are read with ``ast`` (lazy ones inside functions too); an import under
``if TYPE_CHECKING:`` only names a type and does not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import graph, imports, modules

REPO = Path(__file__).resolve().parents[1]

#: bottom to top: each unit may import the ones before it
LAYERS = (
    "drpo_bench",  # the package's __init__: the version only
    "errors", "registry", "store",  # foundations every stage uses
    "suite",  # 1. what to run: schema, YAML, cells, code identity
    "weights",  # where weights come from (and the tiny twins)
    # the seams, each below the ones that build on it
    "prompts", "shapes", "generators", "rewards", "methods", "drpo", "metrics", "toy", "baselines",
    "compute",  # cost: the ledger every update records, FLOPs, timing, memory
    "run",  # 2. running cells: train, evaluate, store
    "report",  # 3. tables and figures from a results folder
    "commands", "__main__",  # the CLI: may import every stage
)

#: the back edges allowed, each with why (module -> module)
EXCEPTIONS = {
    ("drpo_bench.weights.tiny", "drpo_bench.rewards.aesthetic_head"):
        "a twin is built from the network definition its real loader uses (a leaf module)",
    ("drpo_bench.weights.tiny", "drpo_bench.rewards.hpsv3_model"):
        "a twin is built from the network definition its real loader uses (a leaf module)",
    ("drpo_bench.weights.tiny", "drpo_bench.rewards.imagereward_model"):
        "a twin is built from the network definition its real loader uses (a leaf module)",
    ("drpo_bench.weights.tiny", "drpo_bench.drpo.mae_latent_layout"):
        "a twin is built from the network definition its real loader uses (a leaf module)",
    ("baselines.vggflow", "drpo_bench.run.distributed"):
        "VGG-Flow averages its value-gradient normaliser over the data-parallel ranks",
}
#: what a module reached by an exception may itself import: nothing that pulls its stage in
LEAVES = {"drpo_bench.errors"}


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "baselines":
        return "baselines"
    return parts[1] if len(parts) > 1 else "drpo_bench"


def _edges(known: dict[str, Path] | None = None) -> list[tuple[str, str]]:
    """(importer, imported) of every run-time import between the project's modules."""
    return sorted((name, target) for name, targets in graph(runtime_only=True, known=known).items()
                  for target in targets)


def test_every_unit_has_a_place_in_the_layers():
    units = {_unit(m) for m in modules()}
    assert units <= set(LAYERS), f"place {sorted(units - set(LAYERS))} in LAYERS (tests/test_layout.py)"
    assert len(set(LAYERS)) == len(LAYERS)


def _back_edges(edges: list[tuple[str, str]]) -> list[str]:
    """``importer -> imported`` of each edge that goes up the layers and is not an exception."""
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    return [f"{a} -> {b}" for a, b in edges if rank[_unit(b)] > rank[_unit(a)] and (a, b) not in EXCEPTIONS]


def test_imports_go_down_the_layers():
    back = _back_edges(_edges())
    assert not back, ("back edges (a lower stage importing a higher one); move the code down, or name the edge "
                      f"with its reason in EXCEPTIONS: {back}")


def test_each_exception_is_still_needed_and_reaches_a_leaf():
    edges = set(_edges())
    unused = [f"{a} -> {b}" for a, b in EXCEPTIONS if (a, b) not in edges]
    assert not unused, f"drop these from EXCEPTIONS, nothing imports that way any more: {unused}"
    known = modules()
    for _, target in EXCEPTIONS:
        pulled = imports(known[target], target, known, runtime_only=True)
        assert pulled <= LEAVES, f"{target}, reached by an allowed back edge, pulls in {sorted(pulled - LEAVES)}"


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO / "drpo_bench").glob("*/__init__.py")))
def test_each_folder_says_what_it_owns_and_may_import(folder):
    doc = ast.get_docstring(ast.parse((REPO / "drpo_bench" / folder / "__init__.py").read_text()))
    assert doc, f"drpo_bench/{folder}/__init__.py needs a docstring: what the folder owns, what it may import"
    assert "May import" in doc, f"drpo_bench/{folder}/__init__.py: say what it may import (a 'May import:' line)"


def test_the_walker_sees_a_lazy_import_and_skips_a_type_only_one():
    """Or the tests above prove nothing: an import inside a function counts, one under TYPE_CHECKING does not."""
    edges = set(_edges())
    assert ("drpo_bench.commands.run", "drpo_bench.run.runner") in edges  # inside cmd_run
    assert ("drpo_bench.methods", "drpo_bench.compute.ledger") not in edges  # under TYPE_CHECKING only


def test_a_back_edge_fails(tmp_path):
    """A planted back edge (suite importing the runner) is caught, and both names of a
    ``from package import a, b`` count."""
    planted = tmp_path / "drpo_bench" / "suite"
    planted.mkdir(parents=True)
    (planted / "bad.py").write_text("def f():\n    from drpo_bench.run import locks, runner\n")
    known = {**modules(), "drpo_bench.suite.bad": planted / "bad.py"}
    assert _back_edges(_edges(known)) == ["drpo_bench.suite.bad -> drpo_bench.run",
                                          "drpo_bench.suite.bad -> drpo_bench.run.locks",
                                          "drpo_bench.suite.bad -> drpo_bench.run.runner"]


#: what users write in a baseline or a suite (README "Adding a baseline", docs/architecture.md)
PUBLIC = {
    "drpo_bench.methods": ("Method", "TrainContext", "StepOutput", "Candidates", "sample_candidates", "reference_l2"),
    "drpo_bench.registry": ("GENERATORS", "REWARDS", "FEATURES", "METHODS", "METRICS", "PROMPTS", "REGISTRIES"),
    "drpo_bench.methods.offline_data": ("load_dataset",),
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_the_public_names_import_from_where_users_write_them(module):
    import importlib

    loaded = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(loaded, name)]
    assert not missing, f"{module} no longer offers {missing}"


def test_every_dotted_name_the_docs_and_suites_show_resolves():
    """`drpo_bench.a.b` or `package.module:Class` in README.md, docs/ and suites/ names a module or an
    attribute that exists, so a move cannot leave a stale path in what users copy."""
    import importlib
    import re

    texts = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "suites").rglob("*.yaml"),
             *(REPO / "results").glob("*/README.md")]
    names = {m for path in texts for m in re.findall(r"\bdrpo_bench(?:\.\w+)+(?::\w+)?", path.read_text())}
    assert names, "the pattern found nothing: it is broken"
    unresolved = []
    for name in sorted(names):
        dotted = name.replace(":", ".")
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                unresolved.append(name)
            break
        else:
            unresolved.append(name)
    assert not unresolved, f"these names in README/docs/suites do not resolve: {unresolved}"
