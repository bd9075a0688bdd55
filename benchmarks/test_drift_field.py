"""The drift field at the paper's set sizes (forward + backward), on whatever device is here.

Sets (B, N, D), pooled over the K candidates of one prompt, as DrPO builds them:

- ``sd-turbo-l4-patch2``: latent-MAE stage 4, 2×2 patch means: N = 24·16 gen, 8·16 pos/neg, D = 2048
- ``sd-turbo-l4-mean``: stage-4 means: N = 24, 8 pos, 8 neg, D = 2048
- ``sd-turbo-reference``: the reference drift of the patch set (pos = reference, neg = gen itself)
- ``sdxl-mae-cls``: ViT-MAE cls token: N = 16, 8 pos, 8 neg, D = 768
- ``raw-latent-patch4``: raw 64×64 latents, 4×4 patch means: N = 24·256, D = 4
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from drpo_bench.drpo.field import drift_loss

CASES = {
    "sd-turbo-l4-patch2": (24 * 16, 8 * 16, 8 * 16, 2048, False),
    "sd-turbo-l4-mean": (24, 8, 8, 2048, False),
    "sd-turbo-reference": (24 * 16, 24 * 16, 24 * 16, 2048, True),
    "sdxl-mae-cls": (16, 8, 8, 768, False),
    "raw-latent-patch4": (24 * 256, 8 * 256, 8 * 256, 4, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_drift_field_forward_backward(benchmark: Any, case: str) -> None:
    n, p, q, d, self_neg = CASES[case]
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(1, n, d, generator=g).requires_grad_(True)
    pos = torch.randn(1, p, d, generator=g)
    neg = gen.detach().clone() if self_neg else torch.randn(1, q, d, generator=g)
    benchmark.group = "drift field"
    benchmark.extra_info.update({"N": n, "positives": p, "negatives": q, "D": d})

    def step() -> None:
        gen.grad = None
        out = drift_loss(gen, pos, neg, mask_negative_self=self_neg)
        loss = out.loss if hasattr(out, "loss") else out
        loss.sum().backward()

    benchmark(step)
