"""Every shipped suite validates offline (schema, names, pairings; no weights loaded)."""

from pathlib import Path

import pytest

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.suite.planning import plan_cells

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").rglob("*.yaml"))


def test_there_are_suites():
    names = {p.name for p in SUITES}
    assert {"quickstart.yaml", "smoke.yaml"} <= names


@pytest.mark.parametrize("path", SUITES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_suite_validates(path):
    suite = load_suite(path)
    assert plan_cells(suite), "a suite plans at least one cell"
    assert suite.output_dir.parts[0] == "runs", "runs write under runs/, never into committed results/"


def test_validate_command_accepts_all(capsys):
    assert main(["validate", *map(str, SUITES)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ok ")]
    assert len(lines) == len(SUITES)


def test_the_schema_docstring_example_is_a_valid_suite(tmp_path):
    """The example at the top of drpo_bench/suite/config.py is what users copy: it must validate."""
    import drpo_bench.suite.config as config

    example = config.__doc__.split("::", 1)[1].split("``load_suite", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text("\n".join(line[4:] for line in example.splitlines()))
    suite = load_suite(path)
    assert [m.id for m in suite.methods] == ["base", "drpo", "drpo-checker", "draft"]
