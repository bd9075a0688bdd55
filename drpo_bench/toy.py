"""A toy world for testing the harness itself in seconds: not a benchmark.

``toy`` generator: prompt-dependent bias plus noise through a LoRA-adapted linear map, decoded
by a sigmoid to 3x8x8 images. ``toy-redness`` reward: the mean red channel (differentiable);
``toy-redness-blackbox``: the same number, declared non-differentiable. ``toy-pixels``
features: 2x2 patches of the image.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from pydantic import Field

from drpo_bench.drpo.features_base import FeatureEncoder
from drpo_bench.generators.base import Generator
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import FEATURES, GENERATORS, PROMPTS, REWARDS, Seed, StrictConfig
from drpo_bench.rewards.base import Reward

_SIZE = 3 * 8 * 8


class _ToyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, _SIZE)
        self.mix = torch.nn.Linear(_SIZE, _SIZE)

    def forward(self, noise: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.mix(noise) + self.embed(ids)


@GENERATORS.register("toy")
class ToyGenerator(Generator):
    """Toy generator for harness tests (a linear map with LoRA)."""

    class Config(StrictConfig):
        lora_rank: int = Field(4, ge=1)  # enough capacity to move the toy reward
        init_seed: Seed = 0  # base weights are random but fixed
        delay_seconds: float = Field(0.0, ge=0)  # slows each sample() so tests can interrupt a cell mid-run

    def __init__(self, config: Config) -> None:
        from peft import LoraConfig, get_peft_model  # lazy: importing peft costs seconds

        self.config = config
        torch.manual_seed(config.init_seed)
        net = _ToyNet()
        torch.nn.init.normal_(net.mix.weight, std=0.3 / _SIZE**0.5)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, target_modules=["mix"], init_lora_weights=True)
        self.net = get_peft_model(net, lora)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (_SIZE,)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([zlib.crc32(p.encode()) % 64 for p in prompts])

    def sample(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.config.delay_seconds:
            time.sleep(self.config.delay_seconds)
        return self.net(noise, cond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(latents).view(-1, 3, 8, 8)

    @contextmanager
    def reference(self) -> Iterator[None]:
        with self.net.disable_adapter():
            yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.net)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.net, state)


@REWARDS.register("toy-redness")
class ToyRedness(Reward):
    """Mean red channel minus the others (differentiable)."""

    differentiable = True
    scale = "red minus mean of green and blue, -1..1"
    definition = {
        "model": "toy program (drpo_bench.toy)",
        "version": "toy",
        "formula": "mean over pixels of R - (G + B) / 2, images in [0, 1]",
    }

    class Config(StrictConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return (images[:, 0] - images[:, 1:].mean(dim=1)).flatten(1).mean(dim=1)


@REWARDS.register("toy-redness-blackbox")
class ToyRednessBlackBox(ToyRedness):
    """The same number as toy-redness, declared a black box."""

    differentiable = False


@FEATURES.register("toy-pixels")
class ToyPixels(FeatureEncoder):
    """2x2-pixel patches of the 8x8 image: {"patches": (B, 16, 12), "mean": (B, 1, 3)}."""

    input_space = "images"

    class Config(StrictConfig):
        pass

    def __init__(self, config: Config | None = None) -> None:
        self.config = config

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2)  # (B, 3, 4, 4, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, 16, 12)
        return {"patches": patches, "mean": x.mean(dim=(2, 3))[:, None, :]}


@PROMPTS.register("toy")
class ToyPrompts(PromptSet):
    """Twelve train and four eval prompts; the last four train prompts are the validation split."""

    class Config(StrictConfig):
        hold_out_validation: bool = False  # True in tuning runs: "train" leaves out "validation"

    def split(self, name: str) -> list[Prompt]:
        train = [Prompt(f"toy prompt {i}", "even" if i % 2 == 0 else "odd") for i in range(12)]
        if name == "train":
            return train[:8] if self.config.hold_out_validation else train
        if name == "validation":
            return train[8:]
        if name == "eval":
            return [Prompt(f"held-out toy prompt {i}", "even" if i % 2 == 0 else "odd") for i in range(4)]
        raise ValueError(f"toy prompts have splits train, validation and eval, not {name!r}")
