"""The diversity metric over a quickstart-sized final evaluation (98 eval prompts x 16 images):
the shipped metric (pooled vectors without grid cells, 64 images per forward) against the plain
path it replaced (every feature set of one forward over all images, averaged over locations).

    .venv/bin/python -m pytest benchmarks/test_evaluation.py -m benchmark --benchmark-only
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

IMAGES_PER_PROMPT = 16


@pytest.fixture(scope="module")
def samples() -> Any:
    from drpo_bench.metrics.base import EvalSamples
    from drpo_bench.shapes.grammar import prompt_split
    from drpo_bench.shapes.render import render_batch

    torch.set_num_threads(1)  # as in a quickstart cell (threads_per_cell: 1)
    texts = [p.text for p in prompt_split("eval") for _ in range(IMAGES_PER_PROMPT)]  # 1,568 rows
    images = torch.nn.functional.avg_pool2d(render_batch(texts, seed=0), 3, 1, 1)  # (N, 3, 32, 32)
    return EvalSamples(images=images, latents=images, prompts=texts,
                       groups=torch.arange(len(texts)) // IMAGES_PER_PROMPT, tasks=[None] * len(texts))


def test_diversity_metric(benchmark: Any, samples: Any) -> None:
    from drpo_bench.metrics.base import EvalSamples
    from drpo_bench.metrics.diversity import Diversity

    metric = Diversity(Diversity.Config())

    def run() -> float:  # a fresh EvalSamples each round: its per-row memo would skip the work
        fresh = EvalSamples(images=samples.images, latents=samples.latents, prompts=samples.prompts,
                            groups=samples.groups, tasks=samples.tasks)
        return metric.compute(fresh)["diversity"].mean

    benchmark.group = "diversity over 1,568 eval images"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def test_diversity_vectors_the_plain_way(benchmark: Any, samples: Any) -> None:
    from drpo_bench.drpo.features_shapes import ShapesMultiscaleFeatures

    encoder = ShapesMultiscaleFeatures()

    @torch.no_grad()
    def run() -> torch.Tensor:
        feats = encoder.features(samples.images)  # every set, one forward over all images
        return torch.cat([torch.nn.functional.normalize(f.mean(dim=1), dim=-1) for _, f in sorted(feats.items())], -1)

    benchmark.group = "diversity over 1,568 eval images"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
