"""The embedded shapes generator, its feature encoder, and the scripts that build their weights."""

from __future__ import annotations

import torch
import pytest

from drpo_bench.registry import FEATURES, GENERATORS

PROMPTS = ["a red circle", "three blue squares", "a blue circle left of a yellow triangle", "a red square and a green circle"]


def build_generator(**args: object):
    entry = GENERATORS.get("shapes")
    return entry.cls(entry.parse_config(args))


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return build_generator(device="cpu")


def sample(g, prompts=PROMPTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    noise = g.noise(len(prompts), torch.Generator().manual_seed(seed))  # (B, 8, 8, 8)
    return noise, g.sample(noise, g.encode(prompts))


def test_loads_shipped_weights_and_samples_in_range(gen) -> None:
    noise, latents = sample(gen)
    assert gen.latent_shape == (8, 8, 8)
    assert latents.shape == noise.shape == (4, 8, 8, 8)
    images = gen.decode(latents)
    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.isfinite(latents).all()
    assert gen.metadata["script"].startswith("python -m drpo_bench.shapes.pretrain_generator")
    same = gen.generate(PROMPTS, noise)
    torch.testing.assert_close(same, images.detach())


def test_trainable_parameters_are_lora_only(gen) -> None:
    names = [n for n, p in gen.denoiser.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {id(p) for p in gen.trainable_parameters()} == {id(p) for _, p in gen.denoiser.named_parameters() if p.requires_grad}
    for module in (gen.net.text, gen.net.decoder, gen.net.encoder):
        assert not any(p.requires_grad for p in module.parameters())
    assert sum(p.numel() for p in gen.net.parameters()) < 1_500_000


def test_lora_starts_as_identity_then_moves_while_reference_stays(tmp_path) -> None:
    g = build_generator(device="cpu")
    noise, latents = sample(g)
    with torch.no_grad(), g.reference():
        base = g.sample(noise, g.encode(PROMPTS))
    torch.testing.assert_close(latents.detach(), base, rtol=0, atol=1e-6)

    # one manual gradient step on the LoRA parameters
    latents.square().mean().backward()
    with torch.no_grad():
        for p in g.trainable_parameters():
            p -= 0.5 * p.grad.sign() * 0.01  # B starts at 0, so only B moves on the first step
    _, moved = sample(g)
    assert (moved - base).abs().max() > 1e-3
    with torch.no_grad(), g.reference():
        with g.reference():  # re-entrant
            again = g.sample(noise, g.encode(PROMPTS))
        still = g.sample(noise, g.encode(PROMPTS))
    torch.testing.assert_close(again, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(still, base, rtol=0, atol=1e-6)
    _, after = sample(g)
    torch.testing.assert_close(after, moved, rtol=0, atol=1e-6)  # adapters back on after the context

    # save / load round trip into a fresh generator
    path = tmp_path / "adapter.safetensors"
    g.save_adapter(path)
    fresh = build_generator(device="cpu")
    fresh.load_adapter(path)
    _, reloaded = sample(fresh)
    torch.testing.assert_close(reloaded, moved, rtol=0, atol=1e-6)

    other_rank = build_generator(device="cpu", lora_rank=4)
    with pytest.raises(Exception, match="adapter does not match"):
        other_rank.load_adapter(path)


def test_unknown_word_is_a_clear_error(gen) -> None:
    with pytest.raises(Exception, match="outside the shapes vocabulary"):
        gen.encode(["a red hexagon"])


def test_multiscale_features_shapes_and_gradients() -> None:
    entry = FEATURES.get("shapes-multiscale")
    enc = entry.cls(entry.parse_config({}))
    assert enc.input_space == "images"
    assert not any(p.requires_grad for p in enc.net.parameters())
    images = torch.rand(5, 3, 32, 32, requires_grad=True)
    feats = enc.features(images)
    widths = {1: 24, 2: 48, 3: 96}
    expected = {}
    for s, c in widths.items():
        expected[f"s{s}.mean_std"] = (5, 1, 2 * c)
        expected[f"s{s}.patch2"] = (5, 4, c)
        expected[f"s{s}.patch4"] = (5, 16, c)
    expected["s3.layout"] = (5, 1, 16 * 96)
    assert {k: tuple(v.shape) for k, v in feats.items()} == expected
    sum(f.square().mean() for f in feats.values()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    only_deep = entry.cls(entry.parse_config({"stages": [3], "layout": False})).features(images.detach())
    assert set(only_deep) == {"s3.mean_std", "s3.patch2", "s3.patch4"}

    # DrPO's feature_keys: only those sets are computed, bit for bit the same values
    keys = ["s1.mean_std", "s2.patch2", "s3.layout"]
    some = enc.features(images.detach(), keys=keys)
    assert sorted(some) == sorted(keys)
    assert all(torch.equal(some[k], feats[k].detach()) for k in keys)


def test_latent_features_shapes() -> None:
    entry = FEATURES.get("shapes-latent")
    enc = entry.cls(entry.parse_config({}))
    z = torch.randn(3, 4, 8, 8, requires_grad=True)
    feats = enc.features(z)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "latent.whole": (3, 1, 256),
        "latent.cells2": (3, 4, 64),
        "latent.cells4": (3, 16, 16),
    }
    feats["latent.cells4"].sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_train_encoder_script_runs_and_loss_falls(tmp_path) -> None:
    from safetensors import safe_open

    from drpo_bench.shapes.encoder_model import load_encoder
    from drpo_bench.shapes.train_encoder import main

    out = tmp_path / "enc.safetensors"
    main(["--out", str(out), "--seed", "0", "--steps", "40", "--batch", "16", "--threads", "1"])
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert float(metadata["final_loss"]) < float(metadata["first_loss"])
    # the file says how to rebuild it
    assert metadata["command"] == f"python -m drpo_bench.shapes.train_encoder --out {out} --seed 0 --steps 40 --batch 16 --threads 1"
    load_encoder(out)
    entry = FEATURES.get("shapes-multiscale")
    feats = entry.cls(entry.parse_config({"weights": str(out)})).features(torch.rand(2, 3, 32, 32))
    assert feats["s1.patch4"].shape == (2, 16, 24)


def test_pretrain_generator_script_runs_and_losses_fall(tmp_path) -> None:
    from drpo_bench.shapes.pretrain_generator import main

    out = tmp_path / "gen.safetensors"
    facts = main(
        ["--out", str(out), "--seed", "0", "--ae-steps", "40", "--ae-batch", "16",
         "--distill-steps", "30", "--distill-batch", "16",
         "--threads", "1"]  # the shipped recipe's phases
    )
    assert facts["final_ae"] < facts["first_ae"]  # autoencoder reconstruction
    assert facts["final_distill"] < facts["first_distill"]  # regression onto the noise-driven teacher
    g = build_generator(device="cpu", weights=str(out))
    assert g.metadata["distill_steps"] == "30"
    assert float(g.metadata["final_loss"]) == pytest.approx(facts["final_distill"], rel=1e-6)
    _, latents = sample(g)
    assert g.decode(latents).shape == (4, 3, 32, 32)


@pytest.mark.benchmark
def test_benchmark_forward_backward_256(benchmark) -> None:
    """One forward + backward (LoRA grads, through decode) of 16 prompts x K=16 samples."""
    g = build_generator(device="cpu")
    prompts = [p for p in PROMPTS * 4 for _ in range(16)]  # 256
    cond = g.encode(prompts)
    noise = g.noise(len(prompts), torch.Generator().manual_seed(0))

    def step() -> None:
        g.decode(g.sample(noise, cond)).square().mean().backward()

    benchmark(step)
