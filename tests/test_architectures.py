"""Full-size architectures build on the meta device with their published sizes; tiny twins run."""

from __future__ import annotations

import pytest
import torch

from drpo_bench.compute import architectures as arch
from drpo_bench.errors import UserError

WITH_PUBLISHED_SIZE = sorted(n for n, a in arch.ARCHITECTURES.items() if a.published_params)
# every architecture with a canonical forward; inception's tiny twin is full width (slow to init)
RUNNABLE_TINY = sorted(set(arch.ARCHITECTURES) - {"qwen2-vl-7b", "inception-v3"})


@pytest.mark.parametrize("name", WITH_PUBLISHED_SIZE)
def test_parameter_count_matches_published_size(name: str) -> None:
    """SD-Turbo UNet 865.9 M, SDXL-Turbo UNet 2567.5 M, Qwen2-VL-7B 8.29 B, CLIP-H 986.1 M, ..."""
    a = arch.get(name)
    n = arch.parameter_count(arch.build(name))
    assert n == pytest.approx(a.published_params, rel=5e-3), f"{name}: {n / 1e6:.1f} M"


def test_meta_build_allocates_nothing() -> None:
    m = arch.build("hpsv3")  # 7.7 B parameters
    assert all(p.device.type == "meta" for p in m.parameters())
    assert not any(p.requires_grad for p in m.parameters())  # built frozen


@pytest.mark.parametrize("name", RUNNABLE_TINY)
def test_tiny_twin_runs_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    m = arch.build(name, device="cpu", tiny=True)
    assert type(m) is type(arch.build(name))  # same class as the full-size model
    x = arch.example_inputs(name, m, 2, tiny=True)
    out = arch.run(name, m, x)
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_tiny_generator_matches_tiny_vae_and_text_encoder() -> None:
    """Tiny twins compose: text states fit the UNet's cross-attention, latents fit the VAE."""
    te = arch.build("sd-turbo-text-encoder", device="cpu", tiny=True)
    unet = arch.build("sd-turbo-unet", device="cpu", tiny=True)
    vae = arch.build("sd-vae-decoder", device="cpu", tiny=True)
    states = arch.run("sd-turbo-text-encoder", te, arch.example_inputs("sd-turbo-text-encoder", te, 2, tiny=True))
    x = arch.example_inputs("sd-turbo-unet", unet, 2, tiny=True)
    x["encoder_hidden_states"] = states
    latents = arch.run("sd-turbo-unet", unet, x)  # (2, 4, 8, 8)
    images = vae.decode(latents).sample
    assert images.shape == (2, 3, 64, 64)


def test_unknown_names_list_nearest() -> None:
    with pytest.raises(UserError, match="sd-turbo-unet"):
        arch.get("sd-turbo-unte")
    with pytest.raises(UserError, match="text_tokens"):
        arch.get("hpsv3").shape({"text_token": 600})


def test_approximations_are_declared() -> None:
    for name in ("hpsv3", "latent-mae-resnet", "inception-v3"):
        assert arch.get(name).approximate


def test_imagereward_is_priced_on_the_in_process_rewards_own_class() -> None:
    from drpo_bench.rewards.imagereward_model import ImageRewardNetwork

    entry = arch.get("imagereward")
    assert not entry.approximate
    model = arch.build("imagereward")  # meta device
    assert type(model) is ImageRewardNetwork
    assert len(model.vision.encoder.layers) == 24 and len(model.text.encoder.layer) == 12
    assert all(hasattr(layer, "crossattention") for layer in model.text.encoder.layer)
    assert [m.out_features for m in model.mlp.layers if isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]
