"""The command line: help with worked examples, listings."""

import pytest

from drpo_bench.commands.main import main


def test_help_lists_worked_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("drpo-bench run suites/quickstart.yaml", "drpo-bench validate", "drpo-bench report", "drpo-bench ls"):
        assert command in out


@pytest.mark.parametrize("kind,expected", [
    ("methods", ["drpo", "draft", "raft", "base"]),
    ("rewards", ["toy-redness"]),
    ("generators", ["toy"]),
    ("metrics", ["diversity"]),
    ("suites", ["quickstart.yaml", "smoke.yaml"]),
])
def test_ls(kind, expected, capsys):
    assert main(["ls", kind]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out


def test_unknown_subcommand_argument_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "suites/smoke.yaml", "--frobnicate"])
    assert exc.value.code == 2
