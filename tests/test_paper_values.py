"""The paper suites carry the paper's published numbers for their rows, and the report prints them
beside the measured mean ± CI with the difference (the end-to-end check on a tiny-twin run is in
test_paper_suites.py, marked slow)."""

from pathlib import Path

import pytest

from drpo_bench.suite.config import load_suite
from drpo_bench.report.paper import paper_table
from drpo_bench.report.results import CellResult
from drpo_bench.store import CellRecord, MetricRecord

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sd-turbo-pickscore", "sdxl-turbo-pickscore"])
def test_each_paper_suite_and_its_twin_carry_the_published_numbers(name):
    full, tiny = load_suite(REPO / f"suites/paper/{name}.yaml"), load_suite(REPO / f"suites/paper/{name}-tiny.yaml")
    assert full.paper is not None and full.paper == tiny.paper
    assert "arXiv 2606.02521" in full.paper.source and "Pick-a-Pic v2 test" in full.paper.table
    rows = {m.id for m in full.methods} - {"drpo-teacher"}  # the paper has one DrPO row per generator
    assert set(full.paper.values) == rows
    evaluated = {m.label for m in full.eval.metrics}
    for method, values in full.paper.values.items():
        assert set(values) == {"pickscore", "aesthetic", "imagereward"} <= evaluated, method
    assert full.paper.values["base"]["pickscore"] == {"sd-turbo-pickscore": 21.88, "sdxl-turbo-pickscore": 22.45}[name]


def _cell(method: str, seed: int, value: float) -> CellResult:
    info = CellRecord(status="complete", cell_id=f"g--{method}--r--s{seed}", fingerprint="f", suite="s",
                      generator={"name": "g"}, seed=seed, method={"id": method, "method": method},
                      trains=method != "base", eval={}, train_reward=None if method == "base" else {"alias": "r"})
    return CellResult(info.cell_id, info, {"pickscore": MetricRecord(mean=value, higher_is_better=True)}, {}, [], Path("."))


def test_the_table_prints_paper_measured_and_difference():
    rows = {("g", "base", "—"): [_cell("base", 0, 21.0), _cell("base", 1, 22.0)], ("g", "drpo", "r"): [_cell("drpo", 0, 23.0)],
            ("g", "mine", "r"): [_cell("mine", 0, 1.0)]}
    suite = {"paper": {"source": "A paper", "table": "Table 1", "values": {
        "base": {"pickscore": 21.88, "imagereward": 5.75}, "drpo": {"pickscore": 23.49}, "absent": {"pickscore": 1.0}}}}
    table = paper_table(rows, suite, multi=False)
    assert table.headers == ["method", "train reward", "metric", "paper", "measured (mean ± 95% CI)", "measured − paper"]
    assert table.rows[0][:4] == ["base", "—", "pickscore", "21.88"] and table.rows[0][4].startswith("21.500 ± ")
    assert table.rows[0][5] == "-0.380"
    assert table.rows[1] == ["base", "—", "imagereward", "5.75", "not measured", "n/a"]
    assert table.rows[2] == ["drpo", "r", "pickscore", "23.49", "23.000", "-0.490"]
    assert len(table.rows) == 3, "rows without a published value (mine) and values without a row (absent) are left out"
    assert "A paper; Table 1" in table.note
    assert paper_table(rows, {"name": "no paper block"}, multi=False) is None
