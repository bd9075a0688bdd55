"""The Generator seam: a one-step text-to-image generator with trainable adapters."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map

# Conditioning is any pytree (tensor, dict, tuple) of tensors whose first dim is the batch.
Conditioning = Any


def repeat_conditioning(cond: Conditioning, k: int) -> Conditioning:
    """Repeat every batch row k times, row-major: (B, ...) -> (B*k, ...)."""
    return tree_map(lambda t: t.repeat_interleave(k, dim=0) if torch.is_tensor(t) else t, cond)


def select_conditioning(cond: Conditioning, index: torch.Tensor) -> Conditioning:
    """Rows ``index`` of every tensor in the conditioning."""
    return tree_map(lambda t: t[index] if torch.is_tensor(t) else t, cond)


class Generator(abc.ABC):
    """A one-step generator: noise + prompt -> latents in one forward, then decode.

    ``sample`` keeps gradients through ``trainable_parameters()`` (LoRA adapters); inside
    ``reference()`` the same module answers as the frozen base (adapters disabled), so no
    second copy of the weights is held.
    """

    registry_name: str = "generator"

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abc.abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latents (and of its noise), e.g. (4, 64, 64)."""

    @abc.abstractmethod
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for a batch of prompts (no grad needed: encoders are frozen)."""

    @abc.abstractmethod
    def sample(self, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """(B, *latent_shape) noise -> (B, *latent_shape) clean latents, differentiable."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, *latent_shape) latents -> (B, 3, H, W) images in [0, 1], differentiable."""

    @abc.abstractmethod
    @contextmanager
    def reference(self) -> Iterator[None]:
        """Context in which ``sample`` answers as the frozen base generator."""

    @abc.abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    @abc.abstractmethod
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable adapter weights only (what a checkpoint needs)."""

    @abc.abstractmethod
    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    # ---- shared conveniences -------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise (n, *latent_shape) drawn on CPU from ``generator``, then moved.

        Drawing on CPU keeps a seed's noise identical across devices.
        """
        eps = torch.randn((n, *self.latent_shape), generator=generator, dtype=torch.float32)
        return eps.to(self.device)

    def save_adapter(self, path: str | Path) -> None:
        from drpo_bench.store import save_safetensors

        save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict().items()}, path)

    def load_adapter(self, path: str | Path) -> None:
        """Load adapter weights from a file, a cell folder or a peft adapter folder (see
        ``resolve_adapter_file``)."""
        state, _ = read_adapter(resolve_adapter_file(path))
        self.load_adapter_state_dict(state)

    def train(self, mode: bool = True) -> None:  # noqa: B027 - optional hook
        """Switch dropout/norm layers; most one-step generators have none that matter."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], noise: torch.Tensor) -> torch.Tensor:
        """Prompts and matching noise -> images (B, 3, H, W) in [0, 1], no grad."""
        return self.decode(self.sample(noise, self.encode(prompts)))


# ---- adapter files ---------------------------------------------------------------------------------

#: file names an adapter folder may hold, in the order they are looked for: a drpo-bench cell
#: folder, diffusers' ``save_lora_weights`` default, peft's ``save_pretrained``
ADAPTER_FILE_NAMES = ("adapter.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.safetensors")
#: safetensors metadata key diffusers and peft store the LoRA config under (JSON)
LORA_METADATA_KEY = "lora_adapter_metadata"


def resolve_adapter_file(path: str | Path) -> Path:
    """The adapter file meant by ``path``: a ``.safetensors`` file, or a folder holding one of
    ``ADAPTER_FILE_NAMES`` (a finished cell folder, a diffusers LoRA folder, a peft adapter folder,
    or a checkpoint folder with such a folder under ``unet_lora/``)."""
    from drpo_bench.errors import UserError

    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path, path / "unet_lora"):
            for name in ADAPTER_FILE_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise UserError(
            f"adapter: {path} is a folder without an adapter file ({', '.join(ADAPTER_FILE_NAMES)}). Give a "
            "finished cell folder (one with cell.json and adapter.safetensors), or the .safetensors file itself."
        )
    raise UserError(f"adapter: {path} does not exist. Give a .safetensors file or a finished cell folder (absolute, or relative to {Path.cwd()}).")


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors of an adapter file and its LoRA config (rank ``r``, ``lora_alpha``, ``target_modules``)
    when the file says it: the safetensors metadata diffusers and peft write, or a peft
    ``adapter_config.json`` beside it; None otherwise."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from drpo_bench.errors import UserError

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever safetensors raises: the file does not load
        raise UserError(f"adapter: {path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    metadata = None
    if LORA_METADATA_KEY in header:
        try:
            metadata = json.loads(header[LORA_METADATA_KEY])
        except ValueError:
            raise UserError(f"adapter: {path} has unreadable {LORA_METADATA_KEY} metadata (not JSON)") from None
    elif (path.parent / "adapter_config.json").is_file():  # peft save_pretrained
        metadata = json.loads((path.parent / "adapter_config.json").read_text())
    return state, metadata
