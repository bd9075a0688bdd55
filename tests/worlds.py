"""Small worlds where a method's right answer is known, shared by the method tests.

``ShiftGenerator``: x = noise_scale * eps + theta (theta = 0 for the reference), so every
candidate's Jacobian is the identity and theta.grad is the loss gradient in latent space summed
over candidates. ``LatentRedness``: linear in those latents (the logit of the sigmoid images),
d score / d z = +1/64 on red and -1/128 on green and blue; ``LatentBlueness``: its negation,
declared lower-is-better, so it prefers the same images.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from drpo_bench.toy import ToyGenerator, ToyRedness


class ShiftGenerator(ToyGenerator):
    def __init__(self, noise_scale: float = 1.0) -> None:
        self.config = ToyGenerator.Config()
        self.noise_scale = noise_scale
        self.theta = torch.nn.Parameter(torch.zeros(3 * 8 * 8))
        self._ref = False

    def sample(self, noise, cond):
        return self.noise_scale * noise + (torch.zeros_like(self.theta) if self._ref else self.theta)

    @contextmanager
    def reference(self):
        self._ref = True
        try:
            yield
        finally:
            self._ref = False

    def trainable_parameters(self):
        return [self.theta]


class LatentRedness(ToyRedness):
    def score(self, images, prompts):
        z = torch.logit(images.clamp(1e-6, 1 - 1e-6))
        return (z[:, 0] - z[:, 1:].mean(dim=1)).flatten(1).mean(dim=1)


class LatentBlueness(LatentRedness):
    higher_is_better = False

    def score(self, images, prompts):
        return -super().score(images, prompts)


def redness_gain(generator: ShiftGenerator, step: torch.Tensor, size: float = 1e-2) -> float:
    """How much a small descent step along ``-step`` raises LatentRedness at fixed noise (exact: linear)."""
    redness = LatentRedness(LatentRedness.Config())
    eps = torch.randn(16, 3 * 8 * 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = redness(generator.decode(generator.sample(eps, None)), ["p"] * 16).mean()
        generator.theta -= size * step / step.norm()
        after = redness(generator.decode(generator.sample(eps, None)), ["p"] * 16).mean()
        generator.theta += size * step / step.norm()
    return float(after - before)
