"""The Method seam: one training update, shared by DrPO and every baseline.

The shared loop (training.train_cell) owns the optimizer, precision, accumulation, clipping,
checkpoints and logging; a method only computes a loss for a micro-batch of prompts and
backpropagates it (so it can time its own backward phases in the ledger). That sameness is
what makes the comparison fair.

What a method need not remember, because the context does it:
- ``ctx.backward(loss)`` applies the micro-batch's share of the update (``loss_scale``) and the
  mixed-precision scaler;
- ``ctx.score(images, prompts)`` / ``ctx.rank(images, prompts)`` time the reward as
  "reward_forward", rank K candidates per prompt (best first, a NaN never first) and remember
  the scores, from which the loop logs ``reward_mean`` for every method alike.
A method declares the ledger phases its step records (``phases()``); the contract tests check them.

This folder also holds the offline preference data that offline methods read (``offline_data``).
May import: ``errors``, ``registry`` (the generator, reward and ledger types only under
``TYPE_CHECKING``). DrPO (``drpo/``) and the baselines (``baselines/``) implement it.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from drpo_bench.registry import StrictConfig

if TYPE_CHECKING:
    from drpo_bench.generators.base import Generator
    from drpo_bench.compute.ledger import Ledger
    from drpo_bench.rewards.base import Reward


@dataclass
class TrainContext:
    """Everything a method's step may touch. Built once per cell by the runner."""

    generator: Generator
    reward: Reward | None  # None only for methods that do not train
    ledger: Ledger
    candidates_per_prompt: int  # K: samples drawn per prompt per micro-step
    noise_rng: torch.Generator  # CPU generator for noise: a seed's noise is device independent
    loss_scale: float = 1.0  # this micro-batch's share of the update: micro prompts / update prompts
    #: scales a loss for mixed precision (fp16 GradScaler); identity otherwise
    scaled: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda loss: loss)
    #: detached training-reward scores seen in the update in progress (the loop logs their mean)
    scores_seen: list[torch.Tensor] = field(default_factory=list)

    def backward(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor] | None = None) -> None:
        """Backpropagate this micro-batch's ``loss``: times ``loss_scale`` (its share of the update),
        then the precision scaler. ``inputs``: accumulate into these tensors only (a split backward)."""
        scaled = self.scaled(loss * self.loss_scale)
        if inputs is None:
            scaled.backward()
        else:
            torch.autograd.backward(scaled, inputs=list(inputs))

    def score(self, images: torch.Tensor, prompts: Sequence[str], *, grad: bool = False) -> torch.Tensor:
        """The training reward (B,) in float32, timed as "reward_forward" and remembered for the
        update's reward_mean. ``grad=True`` keeps the graph (reward backprop: DRaFT, VGG-Flow)."""
        if self.reward is None:
            raise RuntimeError("this cell has no training reward")
        with self.ledger.phase("reward_forward"), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            scores = self.reward(images, list(prompts)).float()
        self.scores_seen.append(scores.detach())
        return scores

    def rank(self, images: torch.Tensor, prompts: Sequence[str]) -> Ranking:
        """Score K candidates per prompt (rows prompt-major) without grad and rank them, best first."""
        assert self.reward is not None
        scores = self.score(images, prompts).view(-1, self.candidates_per_prompt)  # (P, K)
        ranked = scores if self.reward.higher_is_better else -scores
        ranked = torch.nan_to_num(ranked, nan=float("-inf"))  # a NaN never ranks first
        return Ranking(scores=scores, ranked=ranked, order=ranked.argsort(dim=1, descending=True))

    def reward_mean(self) -> float | None:
        """Mean training reward over the update's scores so far (None if the method scored nothing)."""
        if not self.scores_seen:
            return None
        return float(torch.cat([s.flatten() for s in self.scores_seen]).mean())


@dataclass
class Ranking:
    """The K candidates of each prompt ranked by the training reward."""

    scores: torch.Tensor  # (P, K) as the reward gives them
    ranked: torch.Tensor  # (P, K) larger is better (negated for lower-is-better rewards)
    order: torch.Tensor  # (P, K) candidate indices, best first

    def top(self, n: int) -> torch.Tensor:
        """(P, n) indices of the n best candidates of each prompt."""
        return self.order[:, :n]

    def bottom(self, n: int) -> torch.Tensor:
        """(P, n) indices of the n worst candidates of each prompt."""
        return self.order[:, self.order.shape[1] - n :]


@dataclass
class StepOutput:
    loss: float
    logs: dict[str, float] = field(default_factory=dict)


class Method(abc.ABC):
    """One training update. Subclasses set ``Config`` (a StrictConfig with a reason per default)."""

    registry_name: str = "method"
    Config: ClassVar[type[StrictConfig]] = StrictConfig
    #: reward-backprop methods need ``reward.differentiable``; validate enforces it
    needs_differentiable_reward: ClassVar[bool] = False
    #: False for the untrained base row (the runner skips the training loop)
    trains: ClassVar[bool] = True
    #: paper the method comes from (shown by `drpo-bench ls methods`)
    paper: ClassVar[str] = ""
    #: True for methods that train from a fixed dataset (drpo_bench.methods.offline_data), not the reward
    offline: ClassVar[bool] = False
    #: config fields holding paths; a suite's relative path is resolved against the suite file's directory
    path_args: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def identity_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """The method's arguments as they enter a cell's fingerprint. A path argument names its
        content here (``path_identity``), not where it lies, so that a results folder made on one
        machine is recognized on another (a clone elsewhere, another user's home)."""
        return {k: (path_identity(v) if k in cls.path_args and isinstance(v, str) else v) for k, v in args.items()}

    def __init__(self, config: StrictConfig) -> None:
        self.config = config

    @classmethod
    def check_budget(cls, config: Any, candidates_per_prompt: int) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` (saying how to fix it) when ``config`` cannot run with K candidates per
        prompt. ``validate`` calls it for every cell before any weight loads; the runner calls it too."""

    @classmethod
    def preflight(cls, config: Any) -> None:  # noqa: B027 - optional hook
        """Raise ``UserError`` when a file the method reads is missing (e.g. an offline dataset). `run`
        calls it for every cell before training any; `validate` does not, so suites validate before
        their data are made."""

    def phases(self) -> tuple[str, ...]:
        """The ledger phases one step records with this config (canonical names, drpo_bench.compute.ledger.PHASES)."""
        return ("sample", "decode", "reward_forward", "loss", "generator_backward")

    def prepare_generator(self, generator: Generator) -> None:  # noqa: B027 - optional hook
        """Change the freshly built generator before training or evaluation (the runner calls it for
        every method); e.g. the ``adapter`` row loads an existing LoRA here. No-op by default."""

    def setup(self, ctx: TrainContext) -> None:  # noqa: B027 - optional hook
        """Build what the method needs once per cell (feature encoders, buffers)."""

    @abc.abstractmethod
    def step(self, prompts: Sequence[str], ctx: TrainContext) -> StepOutput:
        """Loss for one micro-batch of prompts; calls ``ctx.backward(loss)`` (or a split backward)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra method state to checkpoint (e.g. a running baseline)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass


def reference_l2(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared difference to the frozen base's output for the same noises, in float32: the
    reference regularizer several public baselines share (``ref_l2_weight``). (N, ...) x2 -> ()."""
    return (latents.float() - reference.float()).pow(2).mean()


@dataclass
class Candidates:
    """K candidates per prompt, prompt-major: row p*K + k is candidate k of prompt p."""

    latents: torch.Tensor  # (P*K, *latent_shape), differentiable through the trainable params
    noise: torch.Tensor  # (P*K, *latent_shape)
    cond: Any  # conditioning repeated K times
    prompts: list[str]  # (P*K,) each prompt repeated K times


def sample_candidates(prompts: Sequence[str], ctx: TrainContext) -> Candidates:
    """Draw K noises per prompt and run the generator once (timed as the "sample" phase)."""
    from drpo_bench.generators.base import repeat_conditioning

    k, gen = ctx.candidates_per_prompt, ctx.generator
    with ctx.ledger.phase("sample"):
        cond = repeat_conditioning(gen.encode(prompts), k)
        noise = gen.noise(len(prompts) * k, ctx.noise_rng)
        latents = gen.sample(noise, cond)
    return Candidates(latents, noise, cond, [text for text in prompts for _ in range(k)])


def path_identity(path: str) -> str:
    """``sha256:<digest>`` of a file's bytes, or of a folder's relative file names and bytes (sorted);
    the path itself when nothing is there yet (validate runs before a dataset exists). Cached by
    the files' names, sizes and modification times, since a cell's fingerprint is asked for often."""
    from pathlib import Path

    root = Path(path).expanduser()
    if not root.exists():
        return path
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    stats = [(f, f.stat()) for f in files]
    listing = tuple((str(f), st.st_size, st.st_mtime_ns) for f, st in stats)
    return _content_digest(str(root), listing)


@functools.lru_cache(maxsize=32)
def _content_digest(root: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for name, _, _ in listing:
        digest.update((str(Path(name).relative_to(root)) if name != root else Path(name).name).encode() + b"\0")
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
