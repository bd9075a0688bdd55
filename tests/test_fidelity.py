"""FID/KID through torch-fidelity, periodic held-out evaluation (eval.every), kept eval images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.metrics.base import EvalSamples
from drpo_bench.metrics.fidelity import FrechetDistance
from drpo_bench.run.runner import run_suite
from drpo_bench.shapes.grammar import prompt_split
from drpo_bench.shapes.render import render_batch

ROOT = Path(__file__).resolve().parents[1]
PER_PROMPT = 8


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [p.text for p in prompt_split("eval")[:48] for _ in range(PER_PROMPT)]


def _samples(images: torch.Tensor, texts: list[str]) -> EvalSamples:
    return EvalSamples(images=images, latents=images, prompts=texts, groups=torch.arange(len(texts)) // PER_PROMPT,
                       tasks=[None] * len(texts))


def _pooled(images: torch.Tensor) -> np.ndarray:
    """The shapes encoder's stage means, computed here without torch-fidelity (float64)."""
    from drpo_bench.drpo.features_shapes import SHIPPED_ENCODER
    from drpo_bench.shapes.encoder_model import load_encoder

    net = load_encoder(SHIPPED_ENCODER).eval()
    uint8 = (images.clamp(0, 1) * 255).round() / 255.0  # the same quantization as the PNG-like input
    with torch.no_grad():
        maps = net(uint8.float())
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1).double().numpy()


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_kid_order_images_by_closeness_to_ground_truth(texts):
    metric = FrechetDistance(FrechetDistance.Config())
    truth_again = metric.compute(_samples(render_batch(texts, seed=7), texts))  # other layouts, same prompts
    blurred = metric.compute(_samples(torch.nn.functional.avg_pool2d(render_batch(texts, seed=7), 3, 1, 1), texts))
    noise = metric.compute(_samples(torch.rand(len(texts), 3, 32, 32, generator=torch.Generator().manual_seed(0)), texts))
    assert truth_again["fid"].mean < blurred["fid"].mean < noise["fid"].mean
    assert truth_again["kid"].mean < blurred["kid"].mean < noise["kid"].mean
    assert not truth_again["fid"].higher_is_better and not truth_again["kid"].higher_is_better
    assert "drpo-shapes-encoder" in truth_again["fid"].definition["model"]
    assert "rendered ground truth" in truth_again["kid"].definition["reference"]


def test_fid_equals_the_frechet_distance_of_the_encoder_features(texts):
    images = torch.nn.functional.avg_pool2d(render_batch(texts, seed=3), 3, 1, 1)
    ours = FrechetDistance(FrechetDistance.Config()).compute(_samples(images, texts))["fid"].mean
    expected = _frechet(_pooled(images), _pooled(render_batch(texts, seed=0)))
    assert ours == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_folder_reference_equals_the_same_images_in_memory(texts, tmp_path):
    from PIL import Image

    truth = render_batch(texts, seed=0)
    for i, image in enumerate(truth):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"{i:04d}.png")
    images = torch.nn.functional.avg_pool2d(render_batch(texts, seed=3), 3, 1, 1)
    in_memory = FrechetDistance(FrechetDistance.Config()).compute(_samples(images, texts))
    folder = FrechetDistance(FrechetDistance.Config(reference=str(tmp_path))).compute(_samples(images, texts))
    assert folder["fid"].mean == pytest.approx(in_memory["fid"].mean, rel=1e-6)
    assert "images in" in folder["fid"].definition["reference"]


def test_bad_reference_and_extractor_are_clear_errors(texts, tmp_path):
    with pytest.raises(UserError, match="neither"):
        FrechetDistance(FrechetDistance.Config(reference=str(tmp_path / "none"))).compute(
            _samples(render_batch(texts, 0), texts))
    with pytest.raises(ValueError, match="unknown feature extractor"):
        FrechetDistance.Config(feature_extractor="inceptionv3")


def test_periodic_eval_history_and_kept_images(tmp_path, capfd):
    suite = load_suite(ROOT / "suites" / "toy" / "harness.yaml",
                       ["seeds=[0]", "budget.steps=4", "eval.every=2", "eval.keep_images=true", "logging.lines=on",
                        "methods=[{id: base, method: base}, {id: raft, method: raft}]"])
    out = tmp_path / "run"
    run_suite(suite, out, quiet=True)
    assert "toy--raft--redness--s0 held-out eval at update 2/4: redness" in capfd.readouterr().err, "live eval lines"
    cell = out / "toy--raft--redness--s0"
    history = [json.loads(line) for line in (cell / "eval_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 2, 4]
    final = json.loads((cell / "eval.json").read_text())["metrics"]
    # the last periodic evaluation sees the same prompts and noise as the final one: same numbers
    assert history[-1]["redness"] == pytest.approx(final["redness"]["mean"], rel=1e-6)
    assert history[0]["redness"] != pytest.approx(history[-1]["redness"], rel=1e-6), "training moved the metric"
    base = json.loads((out / "toy--base--none--s0" / "eval.json").read_text())["metrics"]
    assert history[0]["redness"] == pytest.approx(base["redness"]["mean"], rel=1e-6), "step 0 is the base generator"
    assert "eval_history.jsonl" in json.loads((cell / "cell.json").read_text())["checksums"]
    kept = sorted((cell / "eval_images").glob("*.png"))
    record = json.loads((cell / "eval.json").read_text())
    assert len(kept) == record["n_prompts"] * record["images_per_prompt"]
    assert (cell / "eval.json").stat().st_mode & 0o044, "results are readable by the group and others (umask allowing)"


def test_kid_from_features_is_torch_fidelitys_kid() -> None:
    """The whole-kernel KID draws torch-fidelity's subsets and gives its value (float64 summation order aside)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    from drpo_bench.metrics.fidelity import kid_from_features

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 24, generator=gen, dtype=torch.float64)
    b = torch.randn(260, 24, generator=gen, dtype=torch.float64) * 1.1 + 0.05
    for subsets, size, seed in ((20, 200, 2020), (7, 260, 3)):
        ours = kid_from_features(a, b, subsets=subsets, subset_size=size, rng_seed=seed)
        theirs = kid_features_to_metric(a, b, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False,
                                        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                        kid_kernel_poly_coef0=1)["kernel_inception_distance_mean"]
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    other_draw = kid_from_features(a, b, subsets=20, subset_size=200, rng_seed=1)
    assert other_draw != pytest.approx(kid_from_features(a, b, subsets=20, subset_size=200, rng_seed=2020), rel=1e-9)


def test_metric_equals_torch_fidelitys_calculate_metrics_and_reuses_reference_features(texts, monkeypatch) -> None:
    """FID bit for bit and KID to 1e-9 of torch-fidelity's own calculate_metrics on the same inputs;
    a second evaluation of the same prompts renders and encodes no ground truth again."""
    import torch_fidelity

    import drpo_bench.metrics.fidelity as fidelity
    import drpo_bench.shapes.render as render

    images = render_batch(texts, 5).float() / 255.0
    metric = FrechetDistance(FrechetDistance.Config(kid_scale=1.0, kid_subsets=10))
    fidelity._REFERENCE_FEATURES.clear()
    ours = metric.compute(_samples(images, texts))
    fidelity.register_shapes_extractor()
    theirs = torch_fidelity.calculate_metrics(
        input1=fidelity._Uint8Images(images), input2=fidelity._Uint8Images(render_batch(texts, 0)), fid=True, kid=True,
        feature_extractor=fidelity.SHAPES_EXTRACTOR, kid_subsets=10, kid_subset_size=min(1000, len(texts)), cuda=False,
        cache=False, verbose=False, save_cpu_ram=True, samples_shuffle=False)
    assert ours["fid"].mean == theirs["frechet_inception_distance"]
    assert ours["kid"].mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    renders = []
    monkeypatch.setattr(render, "render_batch", lambda *a, **k: renders.append(a) or pytest.fail("rendered again"))
    again = metric.compute(_samples(images, texts))
    assert again["fid"].mean == ours["fid"].mean and again["kid"].mean == ours["kid"].mean and not renders


def test_the_head_of_an_evaluation_reads_its_rows_of_the_per_image_numbers(texts):
    """A final evaluation's first prompts are scored from the rows of the numbers the whole set
    computed (samples.per_row), and give what scoring those images alone gives."""
    from drpo_bench.metrics.diversity import Diversity
    from drpo_bench.metrics.reward_metric import RewardMetric
    from drpo_bench.rewards.shapes_checker import ShapesChecker

    images = torch.nn.functional.avg_pool2d(render_batch(texts, seed=3), 3, 1, 1)
    reward_calls: list[int] = []

    class CountingChecker(ShapesChecker):
        def __call__(self, batch, prompts):
            reward_calls.append(batch.shape[0])
            return super().__call__(batch, prompts)

    metrics = [RewardMetric(CountingChecker(ShapesChecker.Config()), "checker", 64), Diversity(Diversity.Config()),
               FrechetDistance(FrechetDistance.Config())]
    whole = _samples(images, texts)
    for metric in metrics:
        metric.compute(whole)
    scored = sum(reward_calls)
    head_rows = 16 * PER_PROMPT
    head = whole.head(head_rows)
    from_rows = {k: v.mean for m in metrics for k, v in m.compute(head).items()}
    assert sum(reward_calls) == scored, "the head's checker scores come from the whole set's rows"
    alone = {k: v.mean for m in metrics for k, v in m.compute(_samples(images[:head_rows], texts[:head_rows])).items()}
    assert sum(reward_calls) == scored + head_rows
    assert from_rows.keys() == alone.keys() == {"checker", "diversity", "fid", "kid"}
    for name in alone:
        assert from_rows[name] == pytest.approx(alone[name], rel=1e-5, abs=1e-7), name
    with pytest.raises(ValueError, match="rows"):
        whole.per_row("wrong", lambda: torch.zeros(3))


@pytest.mark.parametrize("feature_args", [{}, {"layout": False, "stages": [2, 3]}])
def test_diversity_is_the_mean_pairwise_distance_of_pooled_unit_vectors(texts, feature_args):
    """Diversity against a plain computation: every key of the shapes encoder's ``features`` (all
    locations, one forward over all images) averaged over locations, unit-normalized and joined,
    then the mean over prompts of the mean distance between a prompt's images. The metric pools
    without building the grid cells and forwards 64 images at a time: equal up to float rounding."""
    from drpo_bench.drpo.features_shapes import ShapesMultiscaleFeatures
    from drpo_bench.metrics.diversity import Diversity

    images = torch.nn.functional.avg_pool2d(render_batch(texts, seed=5), 3, 1, 1)  # (384, 3, 32, 32)
    encoder = ShapesMultiscaleFeatures(ShapesMultiscaleFeatures.Config(**feature_args))
    with torch.no_grad():
        feats = encoder.features(images)
    expected_keys = {f"s{s}.{k}" for s in feature_args.get("stages", [1, 2, 3]) for k in ("mean_std", "patch2", "patch4")}
    assert set(feats) - {"s3.layout"} == expected_keys and ("s3.layout" in feats) == feature_args.get("layout", True)
    vectors = torch.cat([torch.nn.functional.normalize(feats[k].double().mean(dim=1), dim=-1) for k in sorted(feats)], 1)
    per_prompt = []
    for g in range(len(texts) // PER_PROMPT):
        v = vectors[g * PER_PROMPT : (g + 1) * PER_PROMPT]
        pairs = [(v[i] - v[j]).norm() for i in range(PER_PROMPT) for j in range(PER_PROMPT) if i != j]
        per_prompt.append(torch.stack(pairs).mean())
    expected = float(torch.stack(per_prompt).mean())
    metric = Diversity(Diversity.Config(feature_args=feature_args, batch_size=50))  # batches that split prompts
    got = metric.compute(_samples(images, texts))["diversity"].mean
    assert got == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        pooled = encoder.pooled(images[:7])
    assert set(pooled) == set(feats)
    for key, f in feats.items():
        torch.testing.assert_close(pooled[key], f[:7].mean(dim=1), rtol=1e-5, atol=1e-6, msg=key)
