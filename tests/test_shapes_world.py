"""The shapes world's ground truth: grammar, splits, renderer, checker, registrations."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from drpo_bench.registry import PROMPTS, REWARDS
from drpo_bench.shapes.checker import check, check_batch
from drpo_bench.shapes.grammar import TASKS, VOCABULARY, eval_texts, parse, prompt_split, random_prompt, task_space
from drpo_bench.shapes.labeling import find_objects, label
from drpo_bench.shapes.negatives import KINDS, hard_negatives
from drpo_bench.shapes.render import render, render_batch


def test_every_split_prompt_parses_back_to_itself_with_its_task():
    for name in ("train", "eval"):
        for p in prompt_split(name):
            spec = parse(p.text)
            assert spec.text == p.text
            assert spec.task == p.task
            assert set(p.text.split()) <= set(VOCABULARY)


def test_splits_are_disjoint_fixed_and_cover_every_task():
    train, evaluation = prompt_split("train"), prompt_split("eval")
    assert not {p.text for p in train} & {p.text for p in evaluation}
    assert len({p.text for p in train}) == len(train) and len({p.text for p in evaluation}) == len(evaluation)
    assert {p.task for p in train} == set(TASKS) == {p.task for p in evaluation}
    assert 300 <= len(train) <= 600 and 90 <= len(evaluation) <= 120
    assert prompt_split("eval") == evaluation  # fixed
    with pytest.raises(ValueError, match="train"):
        prompt_split("test")


def test_random_prompts_stay_out_of_the_eval_split_and_in_the_grammar():
    rng = random.Random(0)
    held_out = eval_texts()
    for task in (*TASKS, None):
        for _ in range(200):
            p = random_prompt(rng, task)
            assert p.text not in held_out
            assert parse(p.text).task == p.task
            assert task is None or p.task == task


def test_every_task_space_prompt_parses_to_its_task():
    for task in TASKS:
        for spec in task_space(task):
            assert parse(spec.text) == spec and spec.task == task


@pytest.mark.parametrize(
    "text", ["a red", "two square", "a dog", "three red circles and a square", "a circle near a square", "", "a square left a circle"]
)
def test_parse_rejects_text_outside_the_grammar_clearly(text):
    with pytest.raises(ValueError, match="prompt"):
        parse(text)


def test_parse_reads_objects_counts_colors_and_relations():
    spec = parse("a blue circle left of a yellow triangle")
    assert [(o.shape, o.color, o.count) for o in spec.objects] == [("circle", "blue", 1), ("triangle", "yellow", 1)]
    assert spec.relation == "left of" and spec.task == "position"
    spec = parse("three blue squares")
    assert (spec.objects[0].count, spec.objects[0].color, spec.task) == (3, "blue", "counting")


def test_renderer_shape_range_and_determinism():
    texts = [p.text for p in prompt_split("eval")]
    a, b = render_batch(texts, seed=3), render_batch(texts, seed=3)
    assert a.shape == (len(texts), 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, render_batch(texts, seed=4))
    single = render("a red circle", np.random.default_rng(0))
    assert single.shape == (3, 32, 32) and torch.equal(single, render("a red circle", np.random.default_rng(0)))


def test_labeling_matches_eight_connectivity():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # diagonal neighbor: same component
    mask[5:8, 1] = True
    mask[4, 6:8] = True
    labels, n = label(mask)
    assert n == 3 and labels[2, 2] == labels[0, 0] == 1
    assert find_objects(labels, n)[0] == (slice(0, 3), slice(0, 3))


def _eval_renders(reps: int = 3, seed: int = 0):
    prompts = prompt_split("eval")
    texts = [p.text for p in prompts] * reps
    return prompts, texts, render_batch(texts, seed)


def test_checker_scores_ground_truth_of_every_eval_prompt_high():
    prompts, texts, images = _eval_renders()
    scores = check_batch(images, texts)
    assert scores.mean() >= 0.95
    for task in TASKS:
        per_task = [s for s, t in zip(scores.tolist(), [p.task for p in prompts] * 3) if t == task]
        assert np.mean(per_task) >= 0.9, task


def test_checker_is_robust_to_blur_dimming_and_noise():
    from drpo_bench.shapes.train_reward import degrade

    _, texts, images = _eval_renders(reps=2, seed=1)
    degraded = degrade(images, torch.Generator().manual_seed(0), clean_fraction=0.0)
    assert check_batch(degraded, texts).mean() >= 0.95


def test_checker_scores_a_different_prompts_ground_truth_low():
    _, texts, images = _eval_renders()
    from drpo_bench.shapes.reward_eval import derangement

    n = len(texts) // 3
    perm = derangement(n, seed=0)
    deranged = [texts[int(perm[i % n])] for i in range(len(texts))]
    assert check_batch(images, deranged).mean() <= 0.6


def test_checker_scores_hard_negatives_below_one_and_blank_images_low():
    rng = random.Random(0)
    _, texts, images = _eval_renders(reps=1)
    kinds = set()
    for image, text in zip(images, texts):
        for kind, neg in hard_negatives(text, rng).items():
            kinds.add(kind)
            assert check(image, neg) < 1.0, (text, neg)
    assert kinds == set(KINDS)
    assert check_batch(torch.zeros(len(texts), 3, 32, 32), texts).max() <= 0.0 + 1e-9


def test_registered_prompt_set_and_checker_reward():
    entry = PROMPTS.get("shapes")
    prompts = entry.cls(entry.parse_config({}))
    assert prompts.split("eval") == prompt_split("eval") and prompts.split("train") == prompt_split("train")
    r_entry = REWARDS.get("shapes-checker")
    reward = r_entry.cls(r_entry.parse_config({}))
    assert reward.differentiable is False and reward.higher_is_better is True
    images = render_batch(["a red circle", "two squares"], seed=0)
    scores = reward(images, ["a red circle", "two circles"])
    assert scores.shape == (2,) and scores[0] == 1.0 and scores[1] < 1.0
