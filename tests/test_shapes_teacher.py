"""The noise-driven teacher the shapes generator is distilled from (drpo_bench/shapes/teacher.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from drpo_bench.shapes.checker import check_batch
from drpo_bench.shapes.grammar import TASKS, parse, prompt_split, random_prompt
from drpo_bench.shapes.render import MARGIN, SIZE
from drpo_bench.shapes.teacher import COLOR, POTENTIAL, SIDE, field, teacher_images, teacher_layout


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_teacher_images_are_ground_truth_for_every_task() -> None:
    rng = random.Random(0)
    texts = [random_prompt(rng).text for _ in range(300)] + [p.text for p in prompt_split("eval")]
    images, fallbacks = teacher_images(texts, _noise(len(texts)), np.random.default_rng(0))
    assert images.shape == (len(texts), 3, 32, 32)
    scores = check_batch(images, texts)
    assert scores.min() == 1.0  # every image satisfies its prompt, as a rendering does
    assert fallbacks <= 3  # placement almost always comes from the noise
    assert {parse(t).task for t in texts} == set(TASKS)


def test_teacher_is_a_function_of_the_noise() -> None:
    texts = ["three blue squares", "a red circle left of a green triangle", "a square and a diamond"]
    noise = _noise(3)
    a, _ = teacher_images(texts, noise, np.random.default_rng(0))
    b, _ = teacher_images(texts, noise.clone(), np.random.default_rng(1))  # other fallback rng: unused
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, _ = teacher_images(texts, _noise(3, seed=1), np.random.default_rng(0))
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 0.5  # other noise, other placement


def test_first_object_sits_on_the_potentials_highest_point() -> None:
    noise = _noise(20, seed=3).numpy()
    for eps in noise:
        objects = teacher_layout(parse("a red square and a blue circle"), eps)
        assert objects is not None
        potential = field(eps[POTENTIAL])
        peak_y, peak_x = np.unravel_index(np.argmax(potential), potential.shape)
        _, _, y, x, s = objects[0]
        # the box is centered on the peak, then clipped into the image's free border
        assert y == np.clip(peak_y - s // 2, MARGIN, SIZE - MARGIN - s)
        assert x == np.clip(peak_x - s // 2, MARGIN, SIZE - MARGIN - s)


def test_side_and_color_channels_steer_size_and_uncolored_colors() -> None:
    eps = _noise(1, seed=5).numpy()[0]
    big, small = eps.copy(), eps.copy()
    big[SIDE], small[SIDE] = 5.0, -5.0
    (_, _, _, _, s_big), = teacher_layout(parse("a circle"), big)
    (_, _, _, _, s_small), = teacher_layout(parse("a circle"), small)
    assert s_big > s_small
    colors = set()
    for value in np.linspace(-0.6, 0.6, 13):
        shifted = eps.copy()
        shifted[COLOR] = eps[COLOR] + value
        colors.add(teacher_layout(parse("a circle"), shifted)[0][1])
    assert len(colors) >= 4  # an uncolored object's color follows channel 2
    assert {teacher_layout(parse("a red circle"), eps + v)[0][1] for v in (-2.0, 0.0, 2.0)} == {0}  # named: red


def test_field_is_smooth_and_standardized() -> None:
    f = field(_noise(1).numpy()[0, 0])
    assert f.shape == (32, 32)
    assert abs(f.std() - 1.0) < 1e-6
    assert np.abs(np.diff(f, axis=0)).mean() < 0.3  # neighbouring pixels agree: peaks are blobs, not pixels


def test_bad_noise_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="noise"):
        teacher_images(["a circle"], torch.zeros(1, 2, 8, 8), np.random.default_rng(0))
