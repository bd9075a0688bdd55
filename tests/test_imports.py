"""The package's import graph: no cycles, and no production module imports test fixtures.

Walks every module of drpo_bench/ and baselines/ with ``ast`` (imports at any depth, including
the lazy ones inside functions) rather than importing them (tests/import_graph.py).
"""

from __future__ import annotations

from import_graph import graph as _graph

#: modules that only tests may import
TEST_ONLY = ("drpo_bench.testing", "tests", "conftest")


def test_no_production_module_imports_test_fixtures():
    offenders = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                       if t in TEST_ONLY and m not in TEST_ONLY)
    assert not offenders, offenders


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules (registration) is not a cycle of design
    edges = {m: {t for t in ts if not (m and t.startswith(m + "."))} for m, ts in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, [" -> ".join(c) for c in cycles[:5]]


def test_the_walker_sees_lazy_imports():
    """It must find an import inside a function body, or the two tests above prove nothing."""
    graph = _graph()
    assert "drpo_bench.run.runner" in graph["drpo_bench.commands.run"]  # the run command imports the runner lazily


def test_tiny_twins_are_reached_only_as_a_weight_source():
    """drpo_bench.weights.tiny builds random-init weights; production code reaches it only through the
    ``tiny:<twin>`` weight locations that drpo_bench.weights resolves, and architectures.py reads
    its one table of tiny configurations."""
    importers = sorted(m for m, targets in _graph().items() if "drpo_bench.weights.tiny" in targets)
    assert importers == ["drpo_bench.compute.architectures", "drpo_bench.weights"], importers
