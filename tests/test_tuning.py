"""Tuning as a feature: the validation split, the `tune:` schema, `drpo-bench tune` and its use by `run`."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml

from drpo_bench.commands.main import main
from drpo_bench.suite.config import MethodSpec, load_suite
from drpo_bench.errors import ConfigError, UserError
from drpo_bench.suite.planning import plan_cells
from drpo_bench.run.runner import run_suite
from drpo_bench.shapes.grammar import TASKS, prompt_split
from drpo_bench.shapes.prompt_set import ShapesPrompts
from drpo_bench.commands.tune import tune_suite
from drpo_bench.suite.tuning_records import apply_tuning

REPO = Path(__file__).resolve().parents[1]


# ---- the validation split ------------------------------------------------------------------


def test_shapes_validation_split_is_disjoint_from_eval_and_tuning_train():
    train, evals = prompt_split("train"), prompt_split("eval")
    val, rest = prompt_split("validation"), prompt_split("train-minus-validation")
    texts = lambda ps: [p.text for p in ps]  # noqa: E731
    assert len(set(texts(val))) == len(val) > 0
    assert not set(texts(val)) & set(texts(evals))
    assert not set(texts(val)) & set(texts(rest))
    assert not set(texts(rest)) & set(texts(evals))
    # carved out of train: train itself is unchanged, validation + the rest are all of it
    assert sorted(texts(val) + texts(rest)) == sorted(texts(train))
    assert {p.task for p in val} == set(TASKS) and {p.task for p in rest} == set(TASKS)
    held_out = ShapesPrompts(ShapesPrompts.Config(hold_out_validation=True))
    plain = ShapesPrompts(ShapesPrompts.Config())
    assert held_out.split("train") == rest and plain.split("train") == train
    assert held_out.split("eval") == plain.split("eval") == evals


def test_eval_prompts_are_those_of_the_committed_reference():
    """The validation split leaves the held-out eval prompts as the committed quickstart scored them."""
    rows = [json.loads(line) for line in (REPO / "results/quickstart/shapes--base--none--s0/scores.jsonl").read_text().splitlines()]
    committed = {r["prompt_index"]: r["prompt"] for r in rows}
    assert [committed[i] for i in sorted(committed)] == [p.text for p in prompt_split("eval")]


def test_untuned_method_dumps_as_before():
    """No `tune`/`tuned_from` keys unless set: fingerprints of untuned cells do not change."""
    dump = MethodSpec(id="x", method="drpo").model_dump()
    assert "tune" not in dump and "tuned_from" not in dump


# ---- the schema ----------------------------------------------------------------------------

TOY = {
    "name": "toy-tune",
    "generators": ["toy"],
    "rewards": {"redness": "toy-redness"},
    "prompts": "toy",
    "train_rewards": ["redness"],
    "methods": [
        {"id": "base", "method": "base"},
        {"id": "draft", "method": "draft", "tune": {"grid": {"train.lr": [0.001, 0.05]}, "metric": "redness", "steps": 2}},
    ],
    "seeds": [0, 1],
    "budget": {"steps": 2, "candidates_per_prompt": 4, "prompts_per_update": 2},
    "train": {"lr": 0.01, "checkpoint_every": 2, "count_flops": False},
    "eval": {"images_per_prompt": 2, "metrics": ["redness"], "grid_prompts": 2},
    "execution": {"jobs": 1},
}


def _write(tmp_path: Path, suite: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite))
    return path


def _with_tune(**tune) -> dict:
    suite = json.loads(json.dumps(TOY))
    suite["methods"][1]["tune"] = tune
    return suite


@pytest.mark.parametrize("tune, expected", [
    ({"grid": {"lr": [0.001]}, "metric": "redness"}, "train.<setting>"),
    ({"grid": {"train.lr": []}, "metric": "redness"}, "at least one"),
    ({"grid": {}, "metric": "redness"}, "grid"),
    ({"grid": {"train.lr": [0.001, 0.001]}, "metric": "redness"}, "repeats"),
    ({"grid": {"train.lr": [-1.0]}, "metric": "redness"}, "not a valid setting"),
    ({"grid": {"train.lrr": [0.001]}, "metric": "redness"}, "train.lr"),
    ({"grid": {"args.reward_scal": [1.0]}, "metric": "redness"}, "args.reward_scale"),
    ({"grid": {"args.reward_scale": [0.0]}, "metric": "redness"}, "not a valid setting"),
    ({"grid": {"train.lr": [0.001]}, "metric": "checker"}, "not one of this suite's eval metrics"),
    ({"grid": {"train.lr": [0.001]}, "metric": "redness", "sead": 1}, "unknown key `sead`"),
])
def test_bad_tune_blocks_are_config_errors_naming_the_fix(tmp_path, tune, expected):
    with pytest.raises(ConfigError, match="tune") as exc:
        load_suite(_write(tmp_path, _with_tune(**tune)))
    assert expected in str(exc.value)


def test_tune_on_a_method_that_does_not_train_is_refused(tmp_path):
    suite = json.loads(json.dumps(TOY))
    suite["methods"][0]["tune"] = {"grid": {"train.lr": [0.001]}, "metric": "redness"}
    with pytest.raises(ConfigError, match="does not train"):
        load_suite(_write(tmp_path, suite))


def test_tuned_from_a_missing_record_names_the_command(tmp_path):
    suite = json.loads(json.dumps(TOY))
    suite["methods"][1]["tuned_from"] = "nowhere.json"
    with pytest.raises(ConfigError, match="drpo-bench tune"):
        load_suite(_write(tmp_path, suite))


# ---- tune, then run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    suite = load_suite(_write(tmp, TOY))
    out = tmp / "out"
    written = tune_suite(suite, out, quiet=True)
    return suite, out, written


def test_tune_records_every_config_and_chooses_the_best_validation_score(tuned):
    suite, out, written = tuned
    record = json.loads(written["draft"].read_text())
    grid = suite.methods[1].tune.grid
    assert [c["settings"] for c in record["configs"]] == [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    # the argmax, computed here from each cell's own eval.json, not from the record's numbers
    scores = {}
    for c in record["configs"]:
        cell = out / "tuning" / "cells" / c["cell"]
        info = json.loads((cell / "cell.json").read_text())
        assert info["eval"]["split"] == "validation" and info["seed"] == 0 and info["budget"]["steps"] == 2
        assert info["train"]["lr"] == c["settings"]["train.lr"]
        scores[json.dumps(c["settings"])] = json.loads((cell / "eval.json").read_text())["metrics"]["redness"]["mean"]
        assert c["mean"] == scores[json.dumps(c["settings"])]
    best = max(scores, key=scores.get)
    assert record["chosen"] == json.loads(best)
    assert [c["chosen"] for c in record["configs"]] == [json.dumps(c["settings"]) == best for c in record["configs"]]
    assert "highest mean `redness`" in record["rule"]
    assert (out / "tuning" / "draft.md").read_text().count("\n| ") == len(record["configs"]) + 1


def test_tuning_cells_train_without_the_validation_prompts(tuned):
    from drpo_bench.commands.tune import tuning_suite
    from drpo_bench.toy import ToyPrompts

    suite, _, _ = tuned
    tsuite, _ = tuning_suite(suite)
    assert tsuite.prompts.args == {"hold_out_validation": True} and tsuite.eval.split == "validation"
    prompts = ToyPrompts(ToyPrompts.Config(**tsuite.prompts.args))
    assert not {p.text for p in prompts.split("train")} & {p.text for p in prompts.split("validation")}


def test_run_uses_the_chosen_setting_on_every_seed(tuned):
    suite, out, written = tuned
    chosen = json.loads(written["draft"].read_text())["chosen"]["train.lr"]
    summary = run_suite(suite, out, quiet=True)
    assert not summary.failures
    for seed in suite.seeds:
        info = json.loads((out / f"toy--draft--redness--s{seed}" / "cell.json").read_text())
        assert info["train"]["lr"] == chosen and info["overrides"]["train"] == {"lr": chosen}
    base = json.loads((out / "toy--base--none--s0" / "cell.json").read_text())
    assert base["method"]["id"] == "base" and "tune" not in base["method"]
    from drpo_bench.report import build_report

    build_report(out, "md")
    report = (out / "report.md").read_text()
    assert "Tuning: draft" in report and "validation redness" in report


def test_run_without_a_record_is_refused(tmp_path):
    suite = load_suite(_write(tmp_path, TOY))
    with pytest.raises(UserError, match="drpo-bench tune"):
        apply_tuning(suite, tmp_path / "empty")


def test_tuned_from_a_committed_record_applies_it_and_checks_the_grid(tmp_path, tuned):
    _, _, written = tuned
    shutil.copy(written["draft"], tmp_path / "draft.json")
    suite = json.loads(json.dumps(TOY))
    suite["methods"][1]["tuned_from"] = "draft.json"  # relative to the suite file
    applied = apply_tuning(load_suite(_write(tmp_path, suite)), tmp_path / "elsewhere")
    chosen = json.loads(written["draft"].read_text())["chosen"]["train.lr"]
    assert [c.train.lr for c in plan_cells(applied) if c.method.id == "draft"] == [chosen, chosen]
    assert (tmp_path / "elsewhere" / "tuning" / "draft.json").exists()  # a copy for the report
    suite["methods"][1]["tune"]["grid"]["train.lr"] = [0.001, 0.02]
    with pytest.raises(ConfigError, match="rerun `drpo-bench tune`"):
        load_suite(_write(tmp_path, suite, "other.yaml"))


def test_a_records_location_is_not_part_of_a_cells_fingerprint(tmp_path, tuned):
    """The same record in two checkouts (a fresh clone elsewhere) gives the same cells: what the
    record chose is fingerprinted (lr, args), not where the record lies."""
    _, _, written = tuned
    prints = []
    for place in ("a", "b/deeper"):
        folder = tmp_path / place
        folder.mkdir(parents=True)
        shutil.copy(written["draft"], folder / "draft.json")
        suite = json.loads(json.dumps(TOY))
        suite["methods"][1]["tuned_from"] = "draft.json"
        applied = apply_tuning(load_suite(_write(folder, suite)), folder / "out")
        prints.append({c.id: c.fingerprint for c in plan_cells(applied)})
    assert prints[0] == prints[1]


def test_results_record_paths_relative_to_the_working_directory(tmp_path, tuned, monkeypatch):
    """cell.json and suite.json show a tuning record, and an offline dataset, relative to the working
    directory they lie under (no machine path in committed results); a path elsewhere stays as given."""
    _, _, written = tuned
    folder = tmp_path / "checkout" / "suites"
    folder.mkdir(parents=True)
    shutil.copy(written["draft"], folder / "draft.json")
    suite = json.loads(json.dumps(TOY))
    suite["methods"][1]["tuned_from"] = "draft.json"
    suite["seeds"] = [0]
    monkeypatch.chdir(tmp_path / "checkout")
    loaded = load_suite(_write(folder, suite))
    assert Path(loaded.methods[1].tuned_from).is_absolute()  # the loader resolves it against the suite
    assert not run_suite(loaded, Path("runs/out"), quiet=True).failures
    info = json.loads(Path("runs/out/toy--draft--redness--s0/cell.json").read_text())
    assert info["method"]["tuned_from"] == "suites/draft.json"
    snapshot = Path("runs/out/suite.json").read_text()
    assert json.loads(snapshot)["methods"][1]["tuned_from"] == "suites/draft.json"
    assert str(tmp_path) not in snapshot and str(tmp_path) not in json.dumps(info)
    inside = MethodSpec(id="o", method="drpo-offline", args={"dataset": str(tmp_path / "checkout" / "data")})
    elsewhere = MethodSpec(id="o", method="drpo-offline", args={"dataset": "/elsewhere/data"})
    assert inside.record()["args"]["dataset"] == "data" and elsewhere.record()["args"]["dataset"] == "/elsewhere/data"


def test_tune_command(tmp_path, capsys):
    path = _write(tmp_path, {**TOY, "methods": [TOY["methods"][1]]})
    assert main(["tune", str(path), "--output", str(tmp_path / "o"), "--quiet"]) == 0
    assert (tmp_path / "o" / "tuning" / "draft.json").exists()
    assert main(["tune", str(_write(tmp_path, {**TOY, "methods": [TOY["methods"][0]]}, "none.yaml")),
                 "--output", str(tmp_path / "p")]) == 2  # no tuned method: a UserError


def test_committed_quickstart_tuning_records_match_the_suite_and_their_choice():
    """results/quickstart-tuning: one record per tuned method of the suite, over its grid, every
    configuration listed, and the chosen one the argmax of the recorded validation means."""
    suite = load_suite(REPO / "suites" / "quickstart-tuning.yaml")
    tuned = {m.id: m for m in suite.methods if m.tune}
    folder = REPO / "results" / "quickstart-tuning" / "tuning"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(tuned)
    for method_id, spec in tuned.items():
        record = json.loads((folder / f"{method_id}.json").read_text())
        assert record["grid"] == spec.tune.grid and record["metric"] == spec.tune.metric == "checker"
        grid = spec.tune.grid
        assert [c["settings"] for c in record["configs"]] == [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
        best = max(record["configs"], key=lambda c: c["mean"])
        assert record["chosen"] == best["settings"] and [c["chosen"] for c in record["configs"]].count(True) == 1
        assert best["chosen"]


def test_two_tuning_seeds_score_by_the_mean_and_check_stability(tmp_path):
    """tune.seeds: every configuration at each seed; the score is the mean over seeds (computed here
    from each cell's eval.json) and the stability check names each seed's own winner and margin."""
    suite_dict = _with_tune(grid={"train.lr": [0.001, 0.05, 0.2]}, metric="redness", steps=2, seeds=[0, 3])
    suite = load_suite(_write(tmp_path, suite_dict))
    written = tune_suite(suite, tmp_path / "out", quiet=True)
    record = json.loads(written["draft"].read_text())
    assert record["seeds"] == [0, 3] and "mean over seeds 0, 3" in record["rule"]
    per_seed = {}
    for c in record["configs"]:
        assert len(c["cells"]) == 2
        means = {}
        for cell_id in c["cells"]:
            cell = tmp_path / "out" / "tuning" / "cells" / cell_id
            info = json.loads((cell / "cell.json").read_text())
            means[str(info["seed"])] = json.loads((cell / "eval.json").read_text())["metrics"]["redness"]["mean"]
        assert c["seed_means"] == means and c["mean"] == pytest.approx((means["0"] + means["3"]) / 2, abs=1e-12)
        per_seed[json.dumps(c["settings"])] = means
    best = max(per_seed, key=lambda k: per_seed[k]["0"] + per_seed[k]["3"])
    assert record["chosen"] == json.loads(best)
    check = record["stability"]
    for seed in ("0", "3"):
        winner = max(per_seed, key=lambda k: per_seed[k][seed])
        assert check["winners"][seed] == json.loads(winner)
        assert check["margin_over_chosen"][seed] == pytest.approx(per_seed[winner][seed] - per_seed[best][seed], abs=1e-12)
    assert check["stable"] == all(check["winners"][s] == record["chosen"] for s in ("0", "3"))
    text = (tmp_path / "out" / "tuning" / "draft.md").read_text()
    assert ("Stable: the chosen configuration also wins" in text) == check["stable"]
    assert ("Not stable: at seed" in text) == (not check["stable"])
    assert "per seed (0 / 3)" in text


def test_stability_text_says_who_wins_where_and_by_how_much():
    from drpo_bench.suite.tuning_records import stability_text

    record = {"seeds": [0, 1], "seed": 0, "metric": "checker", "chosen": {"train.lr": 0.005},
              "stability": {"stable": False, "winners": {"0": {"train.lr": 0.005}, "1": {"train.lr": 0.001}},
                            "margin_over_chosen": {"0": 0.0, "1": 0.0123}}}
    assert stability_text(record) == "Not stable: at seed 1 train.lr = 0.001 wins by 0.0123 over the chosen configuration (checker)."
    assert stability_text({"seed": 0, "configs": []}) == "One tuning seed (0): no stability check."


@pytest.mark.parametrize("tune, expected", [({"grid": {"train.lr": [0.001]}, "metric": "redness", "seeds": [1, 1]}, "repeats a seed"),
                                            ({"grid": {"train.lr": [0.001]}, "metric": "redness", "seeds": []}, "at least 1")])
def test_bad_tuning_seeds_are_config_errors(tmp_path, tune, expected):
    with pytest.raises(UserError, match=expected):
        load_suite(_write(tmp_path, _with_tune(**tune)))
