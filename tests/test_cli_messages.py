"""What a user sees when a command goes wrong, or right: one-paragraph errors that point at the cause
(a folder, a command-line override, the YAML line), help that has the schema, results on stdout,
copyable `ls suites` paths, an ETA that counts only training cells, honest `bench --tiny` titles."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from drpo_bench.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_folder_is_a_user_error_naming_its_suite_files(command, capsys):
    assert main([command, str(ROOT / "suites" / "paper")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a suite file" in err and "Traceback" not in err and "IsADirectoryError" not in err
    assert "sd-turbo-pickscore" in err


def test_an_override_error_blames_the_command_line_not_a_file_line(capsys):
    assert main(["validate", str(SMOKE), "budget.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "command-line override `budget.stepz=3`" in err
    assert not re.search(r"smoke\.yaml, line \d+", err), err


def test_yaml_syntax_errors_name_the_line_with_the_mistake(tmp_path, capsys):
    keyless = tmp_path / "keyless.yaml"
    keyless.write_text("name: x\nbudget:\n  steps 3\n  candidates_per_prompt: 4\n")  # line 3 lacks its ':'
    assert main(["validate", str(keyless)]) == 2
    assert f"{keyless}, line 3" in capsys.readouterr().err
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text("name: x\nmethods: [{id: base, method: base\nseeds: [0]\n")  # line 2 never closes its '{'
    assert main(["validate", str(unclosed)]) == 2
    err = capsys.readouterr().err
    assert f"{unclosed}, line 2" in err and "noticed at line 3" in err


def test_more_errors_say_how_many_they_list(tmp_path, capsys):
    suite = SMOKE.read_text()
    overrides = [f"budget.wrong{i}=1" for i in range(6)]  # six unknown keys: the first, then 5 more
    assert main(["validate", str(SMOKE), *overrides]) == 2
    err = capsys.readouterr().err
    count, listed = re.search(r"\((\d+) more(?:, first (\d+))?: ", err).groups()
    shown = err.split(" more, first ", 1)[1].split("). See", 1)[0]
    assert int(count) == 5 and int(listed) == 3 and shown.count("unknown key") == 3, err
    assert suite == SMOKE.read_text()


def test_validate_help_has_the_schema(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    assert "suite schema" in out
    for key in ("generators", "methods[]", "candidates_per_prompt", "grid_prompts", "train_rewards"):
        assert key in out, key


def test_validate_ok_lines_go_to_stdout(capsys):
    assert main(["validate", str(SMOKE)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok ") and "cells" in captured.out and "ok " not in captured.err


def test_ls_suites_prints_whole_paths_in_a_narrow_terminal(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(ROOT)
    assert main(["ls", "suites"]) == 0
    out = capsys.readouterr().out
    for path in sorted(Path("suites").rglob("*.yaml")):
        assert str(path) in out, f"{path} cut"


def test_the_eta_counts_training_cells_only():
    from rich.console import Console

    from drpo_bench.run.executors import _Collector

    cells = [SimpleNamespace(id=f"base{i}", trains=False) for i in range(2)] + [
        SimpleNamespace(id=f"train{i}", trains=True) for i in range(2)]
    collect = _Collector(SimpleNamespace(name="s"), Path("."), cells, quiet=True, console=Console())
    column = collect.COLUMNS[-1]
    task = lambda: collect.progress.tasks[0]  # noqa: E731
    for cell in ("base0", "base1"):  # instant evaluation cells: no rate for the trainings yet
        collect.dispatched(cell)
        collect.record(cell, "done", None)
    assert column.render(task()).plain == "?:??:??", "2/4 done, but no training has finished: no ETA"
    collect.dispatched("train0")
    collect.eta["train_start"] -= 100  # the first training ran 100 s
    collect.record("train0", "done", None)
    eta = column.render(task()).plain
    hours, minutes, seconds = (int(x) for x in eta.split(":"))
    assert 95 <= hours * 3600 + minutes * 60 + seconds <= 110, f"one training left at ~100 s each, got {eta}"
    collect.record("train1", "done", None)
    assert column.render(task()).plain == "-:--:--"


def test_bench_tiny_titles_say_tiny_twins():
    from drpo_bench.commands.flops import _title

    setting = SimpleNamespace(generator="sd-turbo", reward="hpsv3", k=4, effective_batch=8, prompts=2,
                              checkpointing=set(), tiny=True)
    title = _title(setting, "seconds per update")
    assert "tiny random-init twins of sd-turbo × hpsv3" in title
    assert "tiny" not in _title(SimpleNamespace(**{**vars(setting), "tiny": False}), "x")


def test_bench_with_too_few_candidates_names_method_arg(capsys):
    assert main(["bench", "--tiny", "--K", "4", "--methods", "drpo", "--updates", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--method-arg drpo.n_pos=" in err and "Traceback" not in err


def test_readme_lists_every_command():
    from drpo_bench.commands.main import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    missing = [c for c in commands if f"drpo-bench {c}" not in readme]
    assert not missing, f"README does not show: {missing}"
