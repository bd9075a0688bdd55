"""Malformed suites: each gives one clear paragraph naming file/line/field and exits 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from drpo_bench.commands.main import main

MALFORMED = Path(__file__).parent / "malformed"

# file -> fragments the message must contain (line numbers where the error has one)
EXPECTED = {
    "unknown_key.yaml": ["line 9", "unknown key `seedz`", "nearest valid keys: seeds"],
    "bad_type.yaml": ["line 10", "budget.steps", "valid integer", "'ten'"],
    "unknown_method.yaml": ["line 8", "methods[1].method", "unknown method 'dpro'", "drpo"],
    "negative_steps.yaml": ["line 10", "budget.steps", "greater than 0", "-5"],
    "empty_seeds.yaml": ["line 9", "seeds", "at least 1 item"],
    "yaml_syntax.yaml": ["line 5", "YAML syntax error"],
    "nondiff_backprop.yaml": ["line 7", "methods[0].reward", "not differentiable", "redness"],
    "unknown_reward_alias.yaml": ["line 5", "train_rewards[0]", "rednes", "redness"],
    "unknown_metric.yaml": ["line 11", "eval.metrics[1]", "diversty", "diversity"],
    "unknown_method_arg.yaml": ["line 8", "methods[1].args.npos", "n_pos"],
    "bad_method_arg.yaml": ["line 8", "methods[1].args.n_pos", "greater than or equal to 1"],
    "duplicate_ids.yaml": ["duplicate method ids", "distinct `id`"],
    "unknown_generator.yaml": ["line 2", "generators[0].name", "unknown generator 'tyo'", "toy"],
    "effective_batch_mismatch.yaml": ["line 10", "effective_batch 100", "16"],
    "not_a_mapping.yaml": ["must be a YAML mapping"],
    "no_train_reward.yaml": ["line 8", "methods[1]", "has no reward"],
    "dup_method_key.yaml": ["line 11", "duplicate key `method`", "first at line 9"],
    "alias_bomb.yaml": ["line 14", "more than 100000 nodes"],
    "path_traversal_id.yaml": ["line 2", "generators[0].id", "../../outside", "letters, digits"],
    "path_traversal_alias.yaml": ["line 3", "rewards./tmp/evil", "letters, digits"],
    "nonfinite_lr.yaml": ["line 10", "train.lr", "finite"],
    # mistakes that used to fail only at run time, after weights loaded
    "unknown_drpo_features.yaml": ["line 8", "methods[1].args.features", "toy-pixelz", "toy-pixels"],
    "bad_drpo_feature_args.yaml": ["line 8", "methods[1].args.feature_args.no_such", "unknown key"],
    "anchors_exceed_k.yaml": ["line 8", "methods[1].args", "n_pos + n_neg = 10", "8 candidates"],
    "unknown_diversity_features.yaml": ["line 11", "eval.metrics[1].args.features", "toy-pixelz"],
    "pso_odd_k.yaml": ["line 8", "methods[1].budget", "must be even, got 7"],
}


def test_every_malformed_file_is_covered():
    assert sorted(p.name for p in MALFORMED.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_suite_is_a_clear_error(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere
    code = main(["validate", str(MALFORMED / name)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    flat = " ".join(err.split())
    assert flat.startswith("error:") and str(MALFORMED / name) in flat
    for fragment in EXPECTED[name]:
        assert fragment in flat, f"{fragment!r} missing from: {flat}"
    assert len(flat) < 600, "one paragraph, not a wall of text"
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_nearest(capsys):
    code = main(["validate", str(MALFORMED / "unknwn_key.yaml")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "does not exist" in err and "unknown_key.yaml" in err


def test_run_on_malformed_writes_nothing(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["run", str(MALFORMED / "nondiff_backprop.yaml"), "--output", str(out)])
    assert code == 2 and not out.exists()


def test_bad_override_is_a_clear_error(capsys):
    code = main(["validate", "--set", "budget.steps=-1", str(Path(__file__).parents[1] / "suites/toy/harness.yaml")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "budget.steps" in err and "greater than 0" in err
    code = main(["validate", "--set", "nonsense", str(Path(__file__).parents[1] / "suites/toy/harness.yaml")])
    assert code == 2 and "dotted.key=value" in " ".join(capsys.readouterr().err.split())


def test_no_traceback_from_the_real_console_script(tmp_path):
    """The installed entry point, in a fresh process: exit 2 and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "drpo_bench", "validate", str(MALFORMED / "unknown_method.yaml")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "unknown method 'dpro'" in proc.stderr


@pytest.mark.parametrize("override, where", [
    ("seeds=[1000000000000000000000000000000]", "seeds[0]"),  # torch.manual_seed: "Overflow when unpacking long"
    ("seeds=[-1]", "seeds[0]"),  # numpy's default_rng refuses a negative seed
    ("eval.seed=18446744073709551616", "eval.seed"),
    ("generators=[{name: toy, args: {init_seed: 100000000000000000000000}}]", "init_seed"),
    ("train.betas=[0.9,1.0]", "train.betas"),  # AdamW: "Invalid beta parameter at index 1"
    ("train.lr=.inf", "train.lr"),  # an infinite learning rate passes "> 0" and fails in training
    ("execution.threads_per_cell=100000000000", "threads_per_cell"),  # torch.set_num_threads takes a C int
])
def test_validate_bounds_what_a_library_would_reject_later(override, where, capsys):
    code = main(["validate", str(Path(__file__).parents[1] / "suites/toy/harness.yaml"), override])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and where in err, err


def test_the_largest_valid_seeds_are_accepted_by_torch_and_numpy():
    """The bounds are the libraries': the largest seed validate lets through works in a cell."""
    import numpy as np
    import torch

    from drpo_bench.run.cell_runner import seed_everything
    from drpo_bench.suite.config import load_suite

    top = 2**63 - 1
    suite = load_suite(Path(__file__).parents[1] / "suites/toy/harness.yaml", [f"seeds=[0,{top}]", f"eval.seed={top}"])
    seed_everything(max(suite.seeds))
    torch.Generator().manual_seed(suite.eval.seed + max(suite.seeds))  # evaluation's noise seed
    np.random.default_rng(top)
    with pytest.raises((RuntimeError, ValueError)):
        torch.manual_seed(2**64)  # what validate now refuses
