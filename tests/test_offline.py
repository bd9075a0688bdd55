"""Offline preference data and the offline methods (drpo-offline, dpo-offline).

The dataset format's validation errors; make-dataset writes a set that loads and whose scores
are the reward's scores of the stored images; positives and negatives are the right images for
scores and for pairs; both offline methods, trained a few updates on a toy dataset, move the
generator toward the dataset's positives (the dataset is scored by redness: redness rises) and
change the adapter; offline DPO's step at the shapes-offline suite's settings equals Diffusion-DPO
restated in float64 on the dataset's own top and bottom images (loss, logs, gradient); suite paths are resolved against the suite file; a run without its dataset
stops before training and names the command that makes it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from drpo_bench.errors import UserError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.commands.make_dataset import make_dataset
from drpo_bench.methods import TrainContext
from drpo_bench.methods.offline_data import load_dataset, write_image
from drpo_bench.registry import METHODS
from drpo_bench.toy import ToyGenerator, ToyPrompts, ToyRedness

TOY_PROMPTS = [p.text for p in ToyPrompts(ToyPrompts.Config()).split("train")]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("offline") / "toy-data"
    make_dataset(folder, generator="toy", prompts="toy", reward="toy-redness", images_per_prompt=8, pairs=True,
                 progress=False, seed=3)
    return folder


def _folder(tmp_path: Path, rows: list[dict], *, sizes: dict[str, int] | None = None, name: str = "scores.jsonl") -> Path:
    """A dataset folder with solid-gray images (value = image index / 10) and ``rows`` as its file."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    keys = ("image", "image_0", "image_1")
    names = sorted({r[k] for r in rows for k in keys if isinstance(r.get(k), str)})
    for i, image in enumerate(names):
        side = (sizes or {}).get(image, 8)
        write_image(root / image, torch.full((3, side, side), i / 10))
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ---- the format ----------------------------------------------------------------------------


def test_missing_folder_and_file_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist.*make-dataset --out"):
        load_dataset(tmp_path / "nope")
    root = _folder(tmp_path, [{"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 1}],
                   name="pairs.jsonl")
    with pytest.raises(UserError, match="has no scores.jsonl. It has pairs.jsonl: set `preferences: pairs`"):
        load_dataset(root, "scores")
    assert load_dataset(root, "pairs").preferences == "pairs"


@pytest.mark.parametrize(("row", "message"), [
    ({"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 2}, r"label_0 must be 1 .* got 2"),
    ({"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": "yes"}, "'label_0' must be a"),
    ({"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 1, "label_1": 1}, "label_1 must be 1 - label_0"),
    ({"caption": "p", "image_0": "images/a.png", "label_0": 1}, "missing key 'image_1'"),
    ({"caption": "p", "prompt": "q", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 1}, "differ"),
    ({"caption": "p", "image_0": "images/a.png", "image_1": "images/a.png", "label_0": 1}, "are the same file"),
])
def test_bad_pairs_rows_are_refused_with_their_line(tmp_path, row, message):
    good = {"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 0}
    root = _folder(tmp_path, [good, row], name="pairs.jsonl")
    with pytest.raises(UserError, match=message) as info:
        load_dataset(root, "pairs")
    assert "pairs.jsonl, line 2" in str(info.value)


def test_image_size_mismatch_and_missing_image_and_bad_score(tmp_path):
    rows = [{"prompt": "p", "image": "images/a.png", "score": 1.0}, {"prompt": "p", "image": "images/b.png", "score": 0.0}]
    root = _folder(tmp_path, rows, sizes={"images/b.png": 16})
    with pytest.raises(UserError, match=r"line 2: image images/b.png is 16x16 but images/a.png is 8x8"):
        load_dataset(root)
    (root / "scores.jsonl").write_text(json.dumps({"prompt": "p", "image": "images/gone.png", "score": 1}) + "\n")
    with pytest.raises(UserError, match="line 1: image file .*gone.png does not exist"):
        load_dataset(root)
    (root / "scores.jsonl").write_text('{"prompt": "p", "image": "images/a.png", "score": NaN}\n')
    with pytest.raises(UserError, match="not finite"):
        load_dataset(root)
    (root / "scores.jsonl").write_text('{"prompt": "p", "image": "../x.png", "score": 1}\n')
    with pytest.raises(UserError, match="outside the dataset folder"):
        load_dataset(root)
    (root / "scores.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1: not valid JSON"):
        load_dataset(root)


# ---- positives and negatives ------------------------------------------------------------------------


def test_scores_select_top_and_bottom_per_prompt(tmp_path):
    scores = {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.7, "e": 0.3}
    rows = [{"prompt": "p", "image": f"images/{k}.png", "score": v} for k, v in scores.items()]
    rows.append({"prompt": "q", "image": "images/a.png", "score": 0.0})
    rows.append({"prompt": "q", "image": "images/b.png", "score": 1.0})
    data = load_dataset(_folder(tmp_path, rows))
    pos, neg = data.select(["p", "q"], 2, 1)
    files = lambda rows: [[Path(data.files[i]).stem for i in r] for r in rows.tolist()]  # noqa: E731
    assert files(pos) == [["b", "d"], ["b", "a"]]
    assert files(neg) == [["c"], ["a"]]
    assert data.score_gap(["p"], 2, 1) == pytest.approx((0.9 + 0.7) / 2 - 0.1)
    with pytest.raises(UserError, match="fewer ranked images"):
        data.check_counts(2, 1, "drpo-offline")  # q has 2 images
    with pytest.raises(UserError, match="not in the dataset"):
        data.select(["never seen"], 1, 1)
    # a lower-is-better reward's scores (dataset.json says so) rank the other way
    (data.root / "dataset.json").write_text(json.dumps({"higher_is_better": False}))
    pos, neg = load_dataset(data.root).select(["p"], 1, 1)
    assert files(pos) == [["c"]] and files(neg) == [["b"]]


def test_pairs_give_the_preferred_as_positives_and_drop_ties(tmp_path):
    rows = [
        {"caption": "p", "image_0": "images/a.png", "image_1": "images/b.png", "label_0": 0, "label_1": 1},  # b wins
        {"caption": "p", "image_0": "images/c.png", "image_1": "images/d.png", "label_0": 1},  # c wins
        {"caption": "p", "image_0": "images/e.png", "image_1": "images/f.png", "label_0": 0.5},  # tie: dropped
        {"prompt": "q", "image_0": "images/a.png", "image_1": "images/c.png", "label_0": 1, "extra": "kept out"},
    ]
    data = load_dataset(_folder(tmp_path, rows, name="pairs.jsonl"), "pairs")
    assert data.dropped_ties == 1
    pos, neg = data.select(["p", "q"], 1, 1)
    name = lambda i: Path(data.files[i]).stem  # noqa: E731
    assert {name(i) for i in data.select(["p"], 2, 2)[0][0].tolist()} == {"b", "c"}
    assert {name(i) for i in data.select(["p"], 2, 2)[1][0].tolist()} == {"a", "d"}
    assert name(pos[1, 0]) == "a" and name(neg[1, 0]) == "c"
    assert {name(i) for i in data.prompts["p"].index.tolist()} == {"a", "b", "c", "d"}, "the tie's images are unused"


# ---- make-dataset ------------------------------------------------------------------------------


def test_make_dataset_writes_a_valid_set_whose_scores_are_the_rewards(toy_data):
    meta = json.loads((toy_data / "dataset.json").read_text())
    assert meta["reward"]["name"] == "toy-redness" and meta["images_per_prompt"] == 8
    data = load_dataset(toy_data)
    assert set(data.prompts) == set(TOY_PROMPTS) and all(len(p.index) == 8 for p in data.prompts.values())
    assert data.images.shape == (12 * 8, 3, 8, 8)
    reward = ToyRedness(ToyRedness.Config())
    for prompt, entry in data.prompts.items():
        again = reward(data.pixels(entry.index), [prompt] * 8).double()
        torch.testing.assert_close(again, entry.score, atol=2 / 255, rtol=0)  # PNG keeps 8 bits
        assert entry.score.std() > 0, "K noises give K different images"
    pairs = load_dataset(toy_data, "pairs")
    assert sum(len(p.index) for p in pairs.prompts.values()) + 2 * pairs.dropped_ties == 12 * 8
    with pytest.raises(UserError, match="not empty"):
        make_dataset(toy_data, generator="toy", prompts="toy", reward="toy-redness", progress=False)


def test_make_dataset_command_line(tmp_path):
    from drpo_bench.commands.main import main

    out = tmp_path / "cli-data"
    assert main(["make-dataset", "--out", str(out), "--generator", "toy", "--prompts", "toy", "--reward",
                 "toy-redness", "--images-per-prompt", "4", "--max-prompts", "3", "--quiet"]) == 0
    assert len(load_dataset(out).prompts) == 3
    assert main(["make-dataset", "--out", str(tmp_path / "x"), "--reward-args", "[1]", "--quiet"]) == 2


# ---- the methods ----------------------------------------------------------------------------------


COLORS = {"red": (0.8, 0.2, 0.2), "gray": (0.5, 0.5, 0.5), "blue": (0.2, 0.2, 0.8)}


def _color_dataset(root: Path, best: str, worst: str) -> Path:
    """Three prompts, five solid images each: two of ``best`` (scored 1.0, 0.9), a gray (0.5), two of
    ``worst`` (0.1, 0.0)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(3):
        for j, (color, score) in enumerate([(best, 1.0), (best, 0.9), ("gray", 0.5), (worst, 0.1), (worst, 0.0)]):
            name = f"images/{p}_{j}.png"
            shade = 1.0 - 0.05 * j  # not all copies alike
            write_image(root / name, torch.tensor(COLORS[color])[:, None, None].expand(3, 8, 8) * shade)
            rows.append({"prompt": TOY_PROMPTS[p], "image": name, "score": score})
    (root / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _red_minus_blue(generator) -> float:
    noise = torch.randn(32, 3 * 8 * 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        images = generator.decode(generator.sample(noise, None))  # (32, 3, 8, 8)
    return float((images[:, 0] - images[:, 2]).mean())


@pytest.mark.parametrize(("name", "args"), [
    ("drpo-offline", {"n_pos": 2, "n_neg": 2, "features": "toy-pixels"}),
    ("dpo-offline", {"n_winners": 2, "n_losers": 2}),
])
@pytest.mark.parametrize(("best", "worst", "sign"), [("red", "blue", 1), ("blue", "red", -1)])
def test_offline_methods_move_toward_the_datasets_positives(tmp_path, name, args, best, worst, sign):
    """A generator x = 0.5 eps + theta and a dataset whose best images are red (blue) and worst blue
    (red): a few updates make the samples redder (bluer), and the reward is never called."""
    from worlds import ShiftGenerator

    data = _color_dataset(tmp_path / "colors", best, worst)
    generator = ShiftGenerator(noise_scale=0.5)
    entry = METHODS.get(name)
    method = entry.cls(entry.parse_config({**args, "dataset": str(data)}))
    ctx = TrainContext(generator=generator, reward=ToyRedness(ToyRedness.Config()), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=8, noise_rng=torch.Generator().manual_seed(0))
    method.setup(ctx)
    optimizer = torch.optim.Adam([generator.theta], lr=5e-2)
    start = _red_minus_blue(generator)
    losses = []
    for step in range(10):
        ctx.noise_rng.manual_seed(step)
        losses.append(method.step(TOY_PROMPTS[:3], ctx).loss)
        optimizer.step()
        optimizer.zero_grad()
    assert not ctx.scores_seen, "an offline method never calls the reward"
    assert generator.theta.abs().sum() > 0, "the adapter changed"
    assert sign * (_red_minus_blue(generator) - start) > 0.05, "toward the dataset's positives, away from its negatives"
    if name == "dpo-offline":  # (DrPO's loss regresses onto a moving target: it need not fall)
        assert losses[-1] < losses[0], "the DPO loss falls as the margin is won"


def test_reward_and_image_size_mismatches_are_refused(toy_data):
    from drpo_bench.rewards.shapes_checker import ShapesChecker

    entry = METHODS.get("drpo-offline")
    method = entry.cls(entry.parse_config({"n_pos": 2, "n_neg": 2, "features": "toy-pixels", "dataset": str(toy_data)}))
    ctx = TrainContext(generator=ToyGenerator(ToyGenerator.Config()), reward=ShapesChecker(ShapesChecker.Config()),
                       ledger=Ledger("cpu", enabled=False), candidates_per_prompt=4, noise_rng=torch.Generator())
    with pytest.raises(UserError, match="scored by reward 'toy-redness'.*training reward is 'shapes-checker'"):
        method.setup(ctx)
    ctx.reward = ToyRedness(ToyRedness.Config())
    method.setup(ctx)
    with pytest.raises(UserError, match=r"images of shape \(3, 8, 8\), the generator makes \(3, 32, 32\)"):
        method.source.anchors(TOY_PROMPTS[:1], torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="nothing to mask"):
        entry.parse_config({"dataset": "x", "mask_anchor_self": True})


# ---- offline DPO's step, value by value (suites/shapes-offline.yaml: 4 winners / 4 losers, beta 1, K 16) ----


def _scored_dataset(root: Path, prompts: list[str], per_prompt: int = 10, seed: int = 7) -> dict[str, list]:
    """Random 8x8 images (on the PNG's 1/255 grid, so they load back exactly) scored by their own mean red
    minus mean blue; returns {prompt: [(score, image (3, 8, 8) float64), ...]} as the test's own record."""
    (root / "images").mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    rows, record = [], {}
    for p, text in enumerate(prompts):
        record[text] = []
        for j in range(per_prompt):
            image = torch.randint(0, 256, (3, 8, 8), generator=g).double() / 255
            score = float(image[0].mean() - image[2].mean())
            name = f"images/{p}_{j}.png"
            write_image(root / name, image.float())
            rows.append({"prompt": text, "image": name, "score": score})
            record[text].append((score, image))
    (root / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return record


def _plain_offline_dpo(record: dict, prompts: list[str], k: int, seed: int, theta: torch.Tensor, *, beta: float,
                       n_w: int, n_l: int, reference_free: bool):
    """Diffusion-DPO on the dataset's top n_w / bottom n_l of each prompt (own sort of the scores), the
    distances per-element MSE in pixel space, sigmoid(z + theta) against the base's sigmoid(z) from the same
    noises; returns (loss, logs, d loss / d theta) in float64."""
    p = len(prompts)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((p * k, 3 * 8 * 8), generator=g).double()
    theta = theta.double().clone().requires_grad_(True)
    x = torch.sigmoid(z + theta).view(p, k, -1)
    x_ref = torch.sigmoid(z).view(p, k, -1)
    losses, logits, gaps, ref_gaps, data_gaps = [], [], [], [], []
    for i, text in enumerate(prompts):
        ranked = sorted(record[text], key=lambda item: -item[0])
        winners = [img.flatten() for _, img in ranked[:n_w]]
        losers = [img.flatten() for _, img in ranked[len(ranked) - n_l:]]
        data_gaps.append(sum(s for s, _ in ranked[:n_w]) / n_w - sum(s for s, _ in ranked[len(ranked) - n_l:]) / n_l)

        def gap(y):
            to_l = sum(((y[c] - l) ** 2).mean() for c in range(k) for l in losers) / (k * n_l)
            return to_l - sum(((y[c] - w) ** 2).mean() for c in range(k) for w in winners) / (k * n_w)

        gaps.append(gap(x[i]))
        ref_gaps.append(torch.zeros(()) if reference_free else gap(x_ref[i]).detach())
        logits.append(beta * (gaps[-1] - ref_gaps[-1]))
        losses.append(torch.nn.functional.softplus(-logits[-1]))
    loss = torch.stack(losses).mean()
    loss.backward()
    mean = lambda v: sum(float(t.detach()) for t in v) / p  # noqa: E731
    logs = {"loss_dpo": float(loss.detach()), "ref_l2": 0.0, "dpo_logit": mean(logits), "policy_gap": mean(gaps),
            "reference_gap": mean(ref_gaps), "pair_accuracy": sum(float(z.detach()) > 0 for z in logits) / p,
            "dataset_winner_minus_loser": sum(data_gaps) / p}
    return float(loss.detach()), logs, theta.grad


@pytest.mark.parametrize("reference_free", [False, True], ids=["shapes-offline", "reference-free"])
def test_offline_dpo_step_equals_diffusion_dpo_on_the_datasets_top_and_bottom(tmp_path, reference_free):
    """The shapes-offline suite's row (n_winners 4, n_losers 4 of a prompt's images, beta 1, K 16) away from
    the base, so the reference's gap differs from the policy's: loss, every log line and the gradient."""
    from worlds import ShiftGenerator

    prompts, k, seed = TOY_PROMPTS[:3], 16, 4
    record = _scored_dataset(tmp_path / "data", prompts)
    generator = ShiftGenerator(noise_scale=1.0)
    theta = torch.zeros(3, 64)
    theta[0], theta[2] = 0.6, -0.6  # redder than the base: toward the dataset's winners
    theta = theta.flatten() + 0.2 * torch.randn(192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        generator.theta.copy_(theta)
    entry = METHODS.get("dpo-offline")
    method = entry.cls(entry.parse_config({"dataset": str(tmp_path / "data"), "n_winners": 4, "n_losers": 4,
                                           "reference_free": reference_free}))
    ctx = TrainContext(generator=generator, reward=ToyRedness(ToyRedness.Config()), ledger=Ledger("cpu", enabled=False),
                       candidates_per_prompt=k, noise_rng=torch.Generator().manual_seed(seed), loss_scale=0.5)
    method.setup(ctx)
    out = method.step(prompts, ctx)
    loss, logs, grad = _plain_offline_dpo(record, prompts, k, seed, theta, beta=1.0, n_w=4, n_l=4,
                                          reference_free=reference_free)
    if not reference_free:
        assert abs(logs["reference_gap"]) > 1e-3 and abs(logs["policy_gap"] - logs["reference_gap"]) > 1e-3, \
            "the world must give the reference its own non-zero gap, else dropping it is invisible"
    assert out.loss == pytest.approx(loss, rel=1e-5), "offline DPO's loss differs from the formula on the dataset's images"
    assert set(out.logs) == set(logs)
    for key, value in logs.items():
        assert out.logs[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    cos = float(torch.nn.functional.cosine_similarity(generator.theta.grad.double(), 0.5 * grad, dim=0))
    ratio = float(generator.theta.grad.double().norm() / (0.5 * grad).norm())
    assert cos > 0.9999 and abs(ratio - 1) < 1e-3, f"gradient cosine {cos:.5f}, norm ratio {ratio:.5f}"
    assert not ctx.scores_seen, "the reward is never called"


@pytest.mark.parametrize(("args", "declared"), [
    ({}, ("sample", "reference", "decode", "loss", "generator_backward")),
    ({"reference_free": True}, ("sample", "decode", "loss", "generator_backward")),
], ids=["shapes-offline", "reference-free"])
def test_offline_dpo_records_exactly_the_phases_it_declares(toy_data, args, declared):
    """No reward_forward (the reward is never called); the ledger's per-phase seconds come from these names."""
    entry = METHODS.get("dpo-offline")
    method = entry.cls(entry.parse_config({"dataset": str(toy_data), "n_winners": 2, "n_losers": 2, **args}))
    ledger = Ledger("cpu")
    ctx = TrainContext(generator=ToyGenerator(ToyGenerator.Config()), reward=ToyRedness(ToyRedness.Config()),
                       ledger=ledger, candidates_per_prompt=4, noise_rng=torch.Generator().manual_seed(0))
    method.setup(ctx)
    ledger.begin_update()
    method.step(TOY_PROMPTS[:2], ctx)
    record = ledger.end_update()
    assert method.phases() == declared
    assert {p for p in record.phase_seconds if p != "other"} == set(declared)


def test_offline_dpo_refuses_data_scored_by_another_reward_and_says_who_refused(toy_data):
    from drpo_bench.rewards.shapes_checker import ShapesChecker

    entry = METHODS.get("dpo-offline")
    method = entry.cls(entry.parse_config({"dataset": str(toy_data), "n_winners": 2, "n_losers": 2}))
    ctx = TrainContext(generator=ToyGenerator(ToyGenerator.Config()), reward=ShapesChecker(ShapesChecker.Config()),
                       ledger=Ledger("cpu", enabled=False), candidates_per_prompt=4, noise_rng=torch.Generator())
    with pytest.raises(UserError, match="^dpo-offline: .* was scored by reward 'toy-redness'.*training reward is "
                                        "'shapes-checker'"):
        method.setup(ctx)
    too_many = entry.cls(entry.parse_config({"dataset": str(toy_data), "n_winners": 5, "n_losers": 5}))
    with pytest.raises(UserError, match=r"^dpo-offline: n_pos \+ n_neg = 10, but"):
        too_many.setup(ctx)


# ---- suites ---------------------------------------------------------------------------------------


SUITE = """\
name: offline-toy
generators: [toy]
rewards: {red: toy-redness}
prompts: toy
train_rewards: [red]
methods:
  - {id: base, method: base}
  - {id: drpo-offline, method: drpo-offline, args: {dataset: DATASET, n_pos: 2, n_neg: 2, features: toy-pixels}}
  - {id: dpo-offline, method: dpo-offline, args: {dataset: DATASET}}
seeds: [0]
budget: {steps: 2, candidates_per_prompt: 4, prompts_per_update: 2}
eval: {images_per_prompt: 2, metrics: [red]}
"""


def test_suite_dataset_is_relative_to_the_suite_file_and_a_missing_one_stops_the_run(tmp_path, toy_data, monkeypatch):
    from drpo_bench.suite.config import load_suite
    from drpo_bench.run.runner import run_suite

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "s.yaml").write_text(textwrap.dedent(SUITE).replace("DATASET", "../data"))
    monkeypatch.chdir(toy_data)  # another working directory: the suite file's directory still decides
    suite = load_suite(suites / "s.yaml")
    assert {m.args.get("dataset") for m in suite.methods if m.args} == {str(tmp_path / "data")}
    with pytest.raises(UserError, match=f"{tmp_path / 'data'} does not exist.*make-dataset --out"):
        run_suite(suite, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists(), "refused before anything was written"
    (tmp_path / "data").symlink_to(toy_data)
    summary = run_suite(load_suite(suites / "s.yaml"), tmp_path / "out", quiet=True)
    assert not summary.failures and set(summary.statuses.values()) == {"done"}


def test_a_cells_fingerprint_names_the_datasets_content_not_its_location(tmp_path, toy_data):
    """A results folder made with the dataset in one place is the same cell with the dataset
    copied elsewhere (a clone on another machine); a changed dataset is another cell."""
    import shutil

    from drpo_bench.suite.config import load_suite
    from drpo_bench.suite.planning import plan_cells

    def fingerprints(folder_name: str) -> dict[str, str]:
        suites = tmp_path / folder_name / "suites"
        suites.mkdir(parents=True, exist_ok=True)
        (suites / "s.yaml").write_text(textwrap.dedent(SUITE).replace("DATASET", "../data"))
        return {c.id: c.fingerprint for c in plan_cells(load_suite(suites / "s.yaml"))}

    shutil.copytree(toy_data, tmp_path / "a" / "data")
    shutil.copytree(toy_data, tmp_path / "b" / "data")
    here, there = fingerprints("a"), fingerprints("b")
    assert here == there
    scores = tmp_path / "b" / "data" / "scores.jsonl"
    rows = scores.read_text().splitlines()
    first = json.loads(rows[0])
    first["score"] = first["score"] + 1.0
    scores.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    changed = fingerprints("b")
    offline = [cid for cid in here if "offline" in cid]
    assert offline and all(changed[c] != here[c] for c in offline)
    assert all(changed[c] == here[c] for c in here if c not in offline)
