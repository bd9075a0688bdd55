"""SD-Turbo / SDXL-Turbo generators on tiny random weights, loaded through the user-facing loader."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.generators.diffusers_common import one_step_coefficients
from drpo_bench.generators.sd_turbo import SDTurboGenerator
from drpo_bench.generators.sdxl_turbo import SDXLTurboGenerator
from drpo_bench.registry import GENERATORS
from drpo_bench.weights.tiny import make_tiny_sd_turbo, make_tiny_sdxl_turbo

PROMPTS = ["a photo of a red cat", "two dogs on a beach"]


def _noise(g, n=2, seed=0):
    return g.noise(n, torch.Generator().manual_seed(seed))


def _perturb_lora(g, scale=0.05):
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in g.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def sd():
    return GENERATORS.build("sd-turbo-tiny")


@pytest.fixture(scope="module")
def sdxl():
    return GENERATORS.build("sdxl-turbo-tiny")


def test_registered_names():
    assert SDTurboGenerator.registry_name == "sd-turbo"
    assert SDXLTurboGenerator.registry_name == "sdxl-turbo"
    # the tiny twins are presets of the real classes whose weights come from tiny:<twin>
    assert GENERATORS.get("sd-turbo-tiny").cls is SDTurboGenerator
    assert GENERATORS.get("sdxl-turbo-tiny").cls is SDXLTurboGenerator
    assert GENERATORS.get("sd-turbo-tiny").preset["pretrained"] == "tiny:sd-turbo"


def test_tiny_folders_use_the_diffusers_layout():
    sd_folder, xl_folder = make_tiny_sd_turbo(), make_tiny_sdxl_turbo()
    for folder, parts in (
        (sd_folder, ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]),
        (xl_folder, ["unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]),
    ):
        index = json.loads((folder / "model_index.json").read_text())
        for part in parts:
            assert (folder / part).is_dir() and part in index
    sched = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "EulerDiscreteScheduler"
    assert (sched["timestep_spacing"], sched["steps_offset"], sched["prediction_type"]) == ("trailing", 1, "epsilon")
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert json.loads((xl_folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "EulerAncestralDiscreteScheduler"
    )
    unet = json.loads((xl_folder / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    assert (sd_folder / "tokenizer" / "vocab.json").is_file() and (sd_folder / "tokenizer" / "merges.txt").is_file()
    assert json.loads((sd_folder / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"] == "!"


def test_offline_tokenizer_gives_open_clip_ids(sd):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-H-14")
    for text in ["a photo of two red cats, highly detailed", "Ünïcode café 123 's astronaut"]:
        ours = sd.tokenizer(text, padding="max_length", max_length=77).input_ids
        theirs = reference([text])[0].tolist()
        end = theirs.index(49407) + 1
        assert ours[:end] == theirs[:end]
    assert sd.tokenizer.pad_token == "!"


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_sample_decode_and_backward_into_lora(name, request):
    g = request.getfixturevalue(name)
    cond = g.encode(PROMPTS)
    noise = _noise(g)
    latents = g.sample(noise, cond)
    assert latents.shape == noise.shape == (2, *g.latent_shape) and latents.dtype == torch.float32
    images = g.decode(latents)
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    g.unet.zero_grad()
    latents.square().mean().backward()
    grads = [p.grad for p in g.trainable_parameters()]
    assert all(p.dtype == torch.float32 for p in g.trainable_parameters())
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)
    frozen = [p for n, p in g.unet.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in frozen)


def test_sdxl_conditioning(sdxl):
    cond = sdxl.encode(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, 77, 32)  # both encoders' widths concatenated (16 + 16)
    assert cond["pooled_prompt_embeds"].shape == (2, 16)
    assert cond["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_reference_is_the_frozen_base(name, request):
    g = request.getfixturevalue(name)
    state = {k: v.clone() for k, v in g.adapter_state_dict().items()}
    cond, noise = g.encode(PROMPTS), _noise(g)
    with torch.no_grad():
        base = g.sample(noise, cond)  # LoRA B starts at zero: the base model
        _perturb_lora(g)
        tuned = g.sample(noise, cond)
        with g.reference():
            ref = g.sample(noise, cond)
        after = g.sample(noise, cond)
    g.load_adapter_state_dict(state)
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(ref, base)
    torch.testing.assert_close(after, tuned)


def test_adapter_roundtrip_and_mismatch(sd, tmp_path):
    state = {k: v.clone() for k, v in sd.adapter_state_dict().items()}
    cond, noise = sd.encode(PROMPTS), _noise(sd)
    _perturb_lora(sd)
    with torch.no_grad():
        tuned = sd.sample(noise, cond)
    sd.save_adapter(tmp_path / "adapter.safetensors")
    other = GENERATORS.build("sd-turbo-tiny")
    other.load_adapter(tmp_path / "adapter.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(other.sample(noise, cond), tuned)
    sd.load_adapter_state_dict(state)
    with pytest.raises(UserError, match="lora_targets"):
        other.load_adapter_state_dict({"nope.lora_A.weight": torch.zeros(1)})
    rank4 = {k: (v[:4] if "lora_A" in k else v[:, :4]) for k, v in state.items()}  # an r=4 adapter
    with pytest.raises(UserError, match="lora_rank"):
        other.load_adapter_state_dict(rank4)


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_one_step_equals_the_diffusers_scheduler_step(name, request):
    """convention "diffusers" is exactly the pipeline: latents·init_noise_sigma, scale, UNet, scheduler step
    (EulerDiscrete for SD-Turbo, EulerAncestral for SDXL-Turbo: no ancestral noise on a step to sigma 0)."""
    g = request.getfixturevalue(name)
    cond, noise = g.encode(PROMPTS), _noise(g)
    scheduler = g.scheduler
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    assert int(t) == 999
    with torch.no_grad():
        latents = noise * scheduler.init_noise_sigma
        model_in = scheduler.scale_model_input(latents, t)
        eps = g.unet(model_in, t, encoder_hidden_states=cond["prompt_embeds"], **g._unet_kwargs(cond)).sample
        expected = scheduler.step(eps, t, latents, generator=torch.Generator().manual_seed(0)).prev_sample
        ours = g.sample(noise, cond)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_drpo_convention_reproduces_the_public_constants(sd):
    c = one_step_coefficients(sd.scheduler, "drpo")
    assert c["c_in"] == 1.0
    for key, public in (("sqrt_one_minus_alpha", 0.9977), ("sqrt_alpha", 0.0683),
                        ("target_sqrt_alpha", 0.9996), ("target_sqrt_one_minus_alpha", 0.0292)):
        assert abs(c[key] - public) < 1e-4, key
    d = one_step_coefficients(sd.scheduler, "diffusers")
    assert abs(d["c_in"] - d["sqrt_one_minus_alpha"]) < 1e-6  # trailing: init_noise_sigma = sigma_max


def test_user_loader_on_a_local_folder_and_checkpointing(sd):
    folder = make_tiny_sd_turbo()
    cfg = SDTurboGenerator.Config(pretrained=str(folder), dtype="fp32", resolution=64, device="cpu",
                                  gradient_checkpointing=True)
    g = SDTurboGenerator(cfg)
    assert g.unet.is_gradient_checkpointing
    with g.reference():  # paused inside: a recompute must never run with the adapters back on
        assert not g.unet.is_gradient_checkpointing
    assert g.unet.is_gradient_checkpointing
    _perturb_lora(g)
    _perturb_lora(sd)
    cond, noise = sd.encode(PROMPTS), _noise(sd)
    grads = []
    for gen in (g, sd):
        gen.unet.zero_grad()
        gen.train(True)
        gen.decode(gen.sample(noise, cond)).mean().backward()
        gen.train(False)
        grads.append([p.grad.clone() for p in gen.trainable_parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_bf16_weights_keep_fp32_lora():
    g = GENERATORS.build("sd-turbo-tiny", {"dtype": "bf16"})
    assert g.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in g.trainable_parameters())
    latents = g.sample(_noise(g), g.encode(PROMPTS))
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="huggingface-cli download stabilityai/sd-turbo"):
        SDTurboGenerator(SDTurboGenerator.Config(pretrained=str(tmp_path / "nowhere")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache"):
        SDXLTurboGenerator(SDXLTurboGenerator.Config())
    partial = tmp_path / "partial"
    shutil.copytree(make_tiny_sd_turbo(), partial)
    shutil.rmtree(partial / "unet")
    with pytest.raises(MissingWeightsError, match="lacks unet"):
        SDTurboGenerator(SDTurboGenerator.Config(pretrained=str(partial)))
    (partial / "unet").mkdir()
    with pytest.raises(MissingWeightsError, match="cannot load unet/"):
        SDTurboGenerator(SDTurboGenerator.Config(pretrained=str(partial), device="cpu", dtype="fp32"))


def test_tiny_twins_keep_the_real_structure():
    """The tiny UNets differ from the full-size configs (drpo_bench.compute.architectures) only in sizes."""
    from drpo_bench.compute import architectures
    from drpo_bench.weights.tiny import TINY_SD_UNET, TINY_SDXL_UNET

    def norm(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    structural = ("down_block_types", "up_block_types", "in_channels", "out_channels", "use_linear_projection",
                  "addition_embed_type", "flip_sin_to_cos", "freq_shift", "act_fn")
    for tiny, name in ((TINY_SD_UNET, "sd-turbo-unet"), (TINY_SDXL_UNET, "sdxl-turbo-unet")):
        real = architectures.get(name).config
        for key in structural:
            assert norm(tiny.get(key)) == norm(real.get(key)), (name, key)


def test_frozen_weight_dtype_defaults_follow_the_public_trainers():
    """SD-Turbo: the public DrPO trainer loads every part in fp32 (fp16 only as autocast); SDXL-Turbo:
    the public SDXL trainers load the pipeline in the bf16 run dtype. Building the real config needs
    no weights."""
    assert SDTurboGenerator.Config().dtype == "fp32"
    assert SDXLTurboGenerator.Config().dtype == "bf16"
    g = GENERATORS.build("sd-turbo-tiny")
    assert g.unet.conv_in.weight.dtype == torch.float32 and g.text_encoder.dtype == torch.float32
