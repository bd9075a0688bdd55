"""HPSv3 in process: the tiny twin through the real loader, the score's definition, gradients to the
pixels, the torch preprocessing against transformers' Qwen2-VL image processor, DRaFT on it, and the
compute suites (validate; the tiny one end to end, slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS, REWARDS
from drpo_bench.rewards.hpsv3 import HPSv3, HPSv3Package
from drpo_bench.rewards.hpsv3_model import (
    INSTRUCTION,
    REWARD_SUFFIX,
    REWARD_TOKEN,
    QwenImagePrep,
    load_hpsv3,
    qwen2vl_pixel_values,
    score_hpsv3,
)
from drpo_bench.weights.tiny import make_tiny_hpsv3

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a red cat", "two dogs on a beach"]


@pytest.fixture(scope="module")
def reward() -> HPSv3:
    return REWARDS.build("hpsv3-tiny")


def _smooth(h: int, w: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Images in [0.2, 0.8] without fine detail: bicubic resizing never leaves [0, 1] (no clamping)."""
    coarse = torch.rand(batch, 3, max(h // 16, 2), max(w // 16, 2), generator=torch.Generator().manual_seed(seed))
    return 0.2 + 0.6 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


# ---- names, layout, loader -------------------------------------------------------------------------


def test_names_and_gradient_truths():
    assert REWARDS.get("hpsv3").cls is HPSv3 and HPSv3.differentiable
    assert REWARDS.get("hpsv3-tiny").cls is HPSv3 and REWARDS.get("hpsv3-tiny").preset["checkpoint"].startswith("tiny:")
    assert REWARDS.get("hpsv3-package").cls is HPSv3Package and not HPSv3Package.differentiable
    assert HPSv3.higher_is_better and HPSv3.scale


def test_tiny_twin_is_in_the_public_layout():
    folder = make_tiny_hpsv3()
    with safe_open(str(folder / "HPSv3.safetensors"), "pt") as f:
        keys = set(f.keys())
        rows = f.get_slice("model.embed_tokens.weight").get_shape()[0]
        assert f.get_slice("lm_head.weight").get_shape()[0] == rows
        assert f.get_slice("rm_head.5.weight").get_shape() == [2, 16]  # (mu, sigma) from 16 units
    # transformers < 4.52 names, as HPSv3.safetensors: vision tower, language model, LM head, reward head
    assert {k.split(".")[0] for k in keys} == {"visual", "model", "lm_head", "rm_head"}
    assert {k.split(".")[1] for k in keys if k.startswith("rm_head.")} == {"0", "3", "5"}
    base = folder / "base"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
                 "preprocessor_config.json"):
        assert (base / name).is_file(), name
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["vocab_size"] > rows  # padded config, resized file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    assert REWARD_TOKEN not in tokenizer.get_vocab() and len(tokenizer) + 1 == rows  # added at load, as the package


def test_loader_reads_the_twin_and_the_newer_key_layout(reward, tmp_path):
    folder = make_tiny_hpsv3()
    network = reward.model.network
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    assert not hasattr(network, "lm_head"), "the LM head is not part of the score"
    state = load_file(str(folder / "HPSv3.safetensors"))
    torch.testing.assert_close(network.rm_head[5].weight, state["rm_head.5.weight"])
    torch.testing.assert_close(network.model.language_model.layers[1].mlp.up_proj.weight,
                               state["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(network.model.visual.patch_embed.proj.weight, state["visual.patch_embed.proj.weight"])
    # the same weights saved under transformers >= 4.52 names score the same
    def newer(k: str) -> str:
        return "model." + k if k.startswith("visual.") else "model.language_model." + k[6:] if k.startswith("model.") else k

    renamed = {newer(k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "HPSv3.safetensors"))
    other = load_hpsv3(tmp_path / "HPSv3.safetensors", folder / "base", device=torch.device("cpu"),
                       dtype=torch.float32, image_tokens=16)
    images = _smooth(64, 64, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(score_hpsv3(other, images, PROMPTS), score_hpsv3(reward.model, images, PROMPTS))
    # a file that is not HPSv3 is one clear error
    save_file({k: v for k, v in state.items() if not k.startswith("rm_head.")}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MissingWeightsError, match="not an HPSv3"):
        load_hpsv3(tmp_path / "bad.safetensors", folder / "base", device=torch.device("cpu"), dtype=torch.float32)


def test_missing_weights_say_how_to_fetch_or_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="MizzenAI/HPSv3") as info:
        HPSv3(HPSv3.Config())
    assert "serve-reward hpsv3-package" in str(info.value)
    with pytest.raises(MissingWeightsError, match="Qwen/Qwen2-VL-7B-Instruct"):
        HPSv3(HPSv3.Config(checkpoint=str(make_tiny_hpsv3() / "HPSv3.safetensors")))


def test_package_path_without_the_package_says_how_to_serve_it():
    pytest.importorskip("drpo_bench")  # always there; the package below usually is not
    try:
        import hpsv3  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="serve-reward hpsv3-package"):
            HPSv3Package(HPSv3Package.Config())
    else:
        pytest.skip("hpsv3 installed: this is a server environment")


# ---- the score ---------------------------------------------------------------------------------------


def test_chat_is_the_packages_and_has_one_reward_token(reward):
    tokens = reward.model.tokens
    text = tokens.text(PROMPTS[0])
    # what Qwen2-VL-7B-Instruct's chat template renders for one user turn (image, text) + generation prompt
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>" + INSTRUCTION.format(text_prompt=PROMPTS[0]) + REWARD_SUFFIX
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected
    assert "Textual prompt - a photo of a red cat\n" in text and text.count(REWARD_TOKEN) == 1
    ids = tokens.ids(PROMPTS[0], 16)
    assert ids.count(tokens.reward_token_id) == 1 and ids.count(tokens.image_token_id) == 16
    batch, mask = tokens.batch(PROMPTS, 16, torch.device("cpu"))
    lengths = mask.sum(-1)
    assert (batch[mask == 0] == tokens.pad_id).all() and int(lengths.max()) == batch.shape[1]  # right padding
    assert bool((mask[:, :-1] >= mask[:, 1:]).all())


def test_score_is_mu_of_the_head_at_the_reward_token(reward):
    """Recompute with transformers' own Qwen2VLModel.forward (its own image-token merge), the package's
    sequential positions, and the head at <|Reward|>: the reward's score is that (B, 2)'s first column."""
    loaded = reward.model
    images = _smooth(64, 64, seed=3, batch=2)
    pixel_values, grid = qwen2vl_pixel_values(images, loaded.prep)
    ids, mask = loaded.tokens.batch(PROMPTS, 16, torch.device("cpu"))
    positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, *ids.shape)
    with torch.no_grad():
        hidden = loaded.network.model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                                      image_grid_thw=grid, position_ids=positions).last_hidden_state
        at = hidden[ids == loaded.tokens.reward_token_id]  # (B, hidden)
        mu_sigma = loaded.network.rm_head(at.float())
        scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, mu_sigma[:, 0])


def test_scores_depend_on_prompt_and_image_and_are_finite(reward):
    a, b = _smooth(64, 64, seed=1), _smooth(64, 64, seed=2)
    with torch.no_grad():
        same_image = reward(torch.cat([a, a]), PROMPTS)
        same_prompt = reward(torch.cat([a, b]), [PROMPTS[0]] * 2)
    assert torch.isfinite(same_image).all() and torch.isfinite(same_prompt).all()
    assert same_image[0] != same_image[1], "the prompt must change the score"
    assert same_prompt[0] != same_prompt[1], "the image must change the score"
    assert same_image[0] == pytest.approx(float(same_prompt[0]), abs=1e-5), "batching must not change a score"


def test_gradients_reach_the_pixels(reward):
    images = _smooth(64, 64, seed=4, batch=2).requires_grad_(True)
    scores = reward(images, PROMPTS)
    scores.sum().backward()
    grad = images.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0


def test_gradient_checkpointing_changes_nothing_but_memory(reward):
    ckpt = REWARDS.build("hpsv3-tiny", {"gradient_checkpointing": True})
    images = _smooth(64, 64, seed=5, batch=2)
    grads, calls = [], []
    for r in (reward, ckpt):
        count = [0]
        attn = r.model.network.model.language_model.layers[0].self_attn  # (layer hooks sit outside the checkpoint)
        hook = attn.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        x = images.clone().requires_grad_(True)
        r(x, PROMPTS).sum().backward()
        hook.remove()
        grads.append(x.grad)
        calls.append(count[0])
    assert calls == [1, 2], "checkpointing recomputes each layer once in backward"
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_weights_give_close_fp32_scores_and_gradients(reward):
    """HPSv3's own dtype: Qwen2-VL in bf16, patches cast to the tower's dtype, the head in fp32."""
    bf16 = REWARDS.build("hpsv3-tiny", {"dtype": "bf16"})
    assert bf16.model.network.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.model.network.rm_head[0].weight.dtype == torch.float32
    images = _smooth(64, 64, seed=8, batch=2).requires_grad_(True)
    scores = bf16(images, PROMPTS)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(scores.detach(), reward(images.detach(), PROMPTS), atol=0.02, rtol=0.05)


# ---- preprocessing against transformers' Qwen2VLImageProcessor ----------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (48, 40)], ids=["no-resize", "downscale", "non-square"])
def test_tiny_preprocessing_equals_the_processor(reward, size):
    """The twin's preprocessor_config.json through transformers' processor, float input (no 8-bit step):
    its resize is torchvision's bicubic with antialias = ours, so the match is exact to float rounding."""
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor.from_pretrained(str(make_tiny_hpsv3() / "base"))
    image = _smooth(*size, seed=6)
    ours, grid = qwen2vl_pixel_values(image, reward.model.prep)
    ref = processor(images=[image[0]], do_rescale=False, return_tensors="pt")
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(ours, ref["pixel_values"], atol=1e-5, rtol=0)


def test_real_size_preprocessing_equals_the_processor_and_the_packages_pil_path():
    """Qwen2-VL-7B's patching at HPSv3's 256 tokens: 512 px -> 448 px, grid (1, 32, 32), 1024 x 1176.

    Against the processor on the same float image: exact (same torchvision bicubic). Against the
    package's inference path (8-bit image, PIL bicubic to 448 in qwen-vl-utils, then the processor):
    differences are 8-bit rounding of the resized image, at most ~1 level (1/255/std = 0.015 after
    normalization; we allow 0.02), 0.3 levels on average (we allow 0.006).
    """
    from transformers import Qwen2VLImageProcessor

    prep = QwenImagePrep()  # Qwen2-VL-7B: patch 14, merge 2, temporal 2; 256 tokens
    assert prep.pixels == 256 * 28 * 28
    processor = Qwen2VLImageProcessor(min_pixels=prep.pixels, max_pixels=prep.pixels)
    image = _smooth(512, 512, seed=7)
    ours, grid = qwen2vl_pixel_values(image, prep)
    assert grid.tolist() == [[1, 32, 32]] and ours.shape == (1024, 3 * 2 * 14 * 14)
    ref = processor(images=[image[0]], do_rescale=False, return_tensors="pt")
    torch.testing.assert_close(ours, ref["pixel_values"], atol=1e-5, rtol=0)

    u8 = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    pil = Image.fromarray(u8).resize((448, 448), Image.BICUBIC)  # qwen-vl-utils fetch_image
    # then the processor with the base model's wide pixel range: no second resize
    package = Qwen2VLImageProcessor()(images=[pil], return_tensors="pt")["pixel_values"]
    quantized = torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1)[None].float() / 255
    ours_u8, _ = qwen2vl_pixel_values(quantized, prep)
    diff = (ours_u8 - package).abs()
    assert float(diff.max()) < 0.02 and float(diff.mean()) < 0.006


def test_no_clamp_after_the_resize_keeps_the_gradient_of_overshooting_pixels():
    """Bicubic overshoots past [0, 1] at hard edges; the package's differentiable path does not clamp,
    and neither do we: those resized pixels keep their value and their gradient."""
    prep = QwenImagePrep()
    image = torch.zeros(1, 3, 512, 512)
    image[..., :, 256:] = 1.0  # a hard black/white edge
    image.requires_grad_(True)
    pixel_values, _ = qwen2vl_pixel_values(image, prep)
    mean = torch.tensor(prep.mean).repeat_interleave(2 * 14 * 14)  # rows: (C, T, p, p) flattened
    std = torch.tensor(prep.std).repeat_interleave(2 * 14 * 14)
    resized = pixel_values * std + mean  # back to [0, 1] units
    over = (resized > 1 + 1e-4) | (resized < -1e-4)
    assert bool(over.any()), "the edge must overshoot, or this test shows nothing"
    (pixel_values * over).sum().backward()  # only overshooting outputs
    assert float(image.grad.abs().sum()) > 0


# ---- DRaFT on it, suites ---------------------------------------------------------------------------


def test_draft_step_on_sd_turbo_tiny_gives_finite_lora_gradients(reward):
    from drpo_bench.registry import GENERATORS

    generator = GENERATORS.build("sd-turbo-tiny")
    ledger = Ledger("cpu")
    ledger.begin_update()
    ctx = TrainContext(generator=generator, reward=reward, ledger=ledger, candidates_per_prompt=2,
                       noise_rng=torch.Generator().manual_seed(0))
    entry = METHODS.get("draft")
    method = entry.cls(entry.parse_config({}))
    method.setup(ctx)
    out = method.step(PROMPTS, ctx)
    record = ledger.end_update()
    assert math.isfinite(out.loss) and ctx.reward_mean() is not None and math.isfinite(ctx.reward_mean())
    grads = [(n, p.grad) for n, p in generator.unet.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for _, g in grads)
    assert sum(float(g.abs().sum()) for n, g in grads if "lora_B" in n) > 0  # B gets the reward's gradient first
    assert {"reward_forward", "reward_backward", "generator_backward"} <= set(record.phase_seconds)


def test_validate_accepts_draft_on_hpsv3_and_refuses_it_on_the_package():
    for name in ("sd-turbo-hpsv3", "sd-turbo-hpsv3-tiny"):
        suite = load_suite(REPO / "suites" / "compute" / f"{name}.yaml")
        assert {m.id for m in suite.methods} == {"base", "drpo", "draft"}
    full = load_suite(REPO / "suites" / "compute" / "sd-turbo-hpsv3.yaml")
    assert full.budget.candidates_per_prompt * full.budget.prompts_per_update == 192
    assert full.budget.candidates_per_prompt == 24 and full.train.precision == "fp16"
    with pytest.raises(UserError, match="not differentiable"):
        load_suite(REPO / "suites" / "compute" / "sd-turbo-hpsv3-tiny.yaml", ["rewards={hpsv3: hpsv3-package}"])


@pytest.mark.slow
def test_tiny_compute_suite_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the suite names its prompt files relative to the repository root
    out = tmp_path / "run"
    assert main(["run", "suites/compute/sd-turbo-hpsv3-tiny.yaml", "--output", str(out), "--quiet"]) == 0
    cells = sorted(p for p in out.iterdir() if p.is_dir() and (p / "cell.json").is_file())
    assert {json.loads((c / "cell.json").read_text())["method"]["id"] for c in cells} == {"base", "drpo", "draft"}
    for cell in cells:
        assert (cell / "eval.json").is_file()
    assert (out / "report.md").is_file()
