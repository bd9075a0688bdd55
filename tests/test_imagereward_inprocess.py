"""ImageReward in process: the tiny twin through the real loader (official key layout), the score's
definition, preprocessing against torchvision's transforms, the 35-token truncation, gradients to
the pixels (against a finite difference), DRaFT on it, and the compute suites (validate; the tiny
one end to end, slow). Equality with the authors' package: tests/test_imagereward_official.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from drpo_bench.commands.main import main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.compute.ledger import Ledger
from drpo_bench.methods import TrainContext
from drpo_bench.registry import METHODS, REWARDS
from drpo_bench.rewards.imagereward import ImageReward, ImageRewardPackage
from drpo_bench.rewards.imagereward_model import (
    IMAGEREWARD_MEAN,
    IMAGEREWARD_STD,
    checkpoint_key,
    imagereward_pixels,
    load_imagereward,
    official_key,
    resized_size,
)
from drpo_bench.weights.tiny import make_tiny_imagereward

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a red cat", "two dogs on a beach"]


@pytest.fixture(scope="module")
def reward() -> ImageReward:
    return REWARDS.build("imagereward-tiny")


def _smooth(h: int, w: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    coarse = torch.rand(batch, 3, max(h // 16, 2), max(w // 16, 2), generator=torch.Generator().manual_seed(seed))
    return 0.2 + 0.6 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


# ---- names, layout, loader -------------------------------------------------------------------------


def test_names_and_gradient_truths():
    assert REWARDS.get("imagereward").cls is ImageReward and ImageReward.differentiable
    assert REWARDS.get("imagereward-tiny").cls is ImageReward
    assert REWARDS.get("imagereward-tiny").preset["checkpoint"].startswith("tiny:")
    assert REWARDS.get("imagereward-package").cls is ImageRewardPackage and not ImageRewardPackage.differentiable
    assert ImageReward.report_scale == ImageRewardPackage.report_scale == 10.0
    assert ImageReward.definition["score"] == ImageRewardPackage.definition["score"]
    assert ImageReward.definition["formula"].startswith("10 * ")


def test_tiny_twin_is_in_the_official_layout():
    folder = make_tiny_imagereward()
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    tops = {k.split(".")[0] + "." + k.split(".")[1] for k in state}
    assert tops == {"blip.visual_encoder", "blip.text_encoder", "blip.vision_proj", "blip.text_proj", "mlp.layers"}
    # timm's ViT names, med.py's BERT names (cross-attention in every layer), the MLP's Linear indices
    for key in ("blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed", "blip.visual_encoder.norm.weight",
                "blip.visual_encoder.patch_embed.proj.weight", "blip.visual_encoder.blocks.1.attn.qkv.bias",
                "blip.visual_encoder.blocks.0.attn.proj.weight", "blip.visual_encoder.blocks.0.mlp.fc2.weight",
                "blip.text_encoder.embeddings.word_embeddings.weight", "blip.text_encoder.embeddings.position_ids",
                "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight",
                "blip.text_encoder.encoder.layer.0.output.LayerNorm.bias"):
        assert key in state, key
    assert {k.split(".")[2] for k in state if k.startswith("mlp.")} == {"0", "2", "4", "6", "7"}
    med = json.loads((folder / "med_config.json").read_text())
    assert med["add_cross_attention"] and med["vocab_size"] == state[
        "blip.text_encoder.embeddings.word_embeddings.weight"].shape[0]
    assert (folder / "bert-base-uncased" / "vocab.txt").is_file()


def test_key_map_round_trips_and_drops_what_the_score_does_not_use():
    folder = make_tiny_imagereward()
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    for key in state:
        ours = checkpoint_key(key)
        if ours is None:
            assert key.startswith(("blip.vision_proj", "blip.text_proj")) or key.endswith("position_ids")
        else:
            assert official_key(ours) == key
    assert checkpoint_key("blip.visual_encoder.blocks.3.attn.qkv.weight") == "vision.encoder.layers.3.self_attn.qkv.weight"
    assert checkpoint_key("blip.visual_encoder.norm.bias") == "vision.post_layernorm.bias"


def test_loader_reads_the_twin(reward):
    network = reward.model.network
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    state = torch.load(make_tiny_imagereward() / "ImageReward.pt", weights_only=True)
    torch.testing.assert_close(network.vision.encoder.layers[1].self_attn.qkv.weight,
                               state["blip.visual_encoder.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(network.vision.embeddings.position_embedding, state["blip.visual_encoder.pos_embed"])
    torch.testing.assert_close(network.text.encoder.layer[0].crossattention.self.value.weight,
                               state["blip.text_encoder.encoder.layer.0.crossattention.self.value.weight"])
    torch.testing.assert_close(network.mlp.layers[7].weight, state["mlp.layers.7.weight"])
    cfg = network.vision.config
    assert cfg.layer_norm_eps == 1e-6 and cfg.num_attention_heads == cfg.hidden_size // 64
    assert reward.model.image_size == 48  # from the position embeddings: (1 + 9) tokens, patch 16


def test_a_file_that_is_not_imagereward_is_one_clear_error(tmp_path):
    folder = make_tiny_imagereward()
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("mlp.")}, tmp_path / "bad.pt")
    with pytest.raises(MissingWeightsError, match="not an ImageReward"):
        load_imagereward(tmp_path / "bad.pt", folder / "med_config.json", folder / "bert-base-uncased",
                         device=torch.device("cpu"), dtype=torch.float32)
    med = json.loads((folder / "med_config.json").read_text())
    (tmp_path / "med_config.json").write_text(json.dumps(dict(med, num_hidden_layers=3)))
    with pytest.raises(MissingWeightsError, match="does not fit BLIP"):
        load_imagereward(folder / "ImageReward.pt", tmp_path / "med_config.json", folder / "bert-base-uncased",
                         device=torch.device("cpu"), dtype=torch.float32)


def test_missing_weights_say_how_to_fetch_or_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="THUDM/ImageReward") as info:
        ImageReward(ImageReward.Config())
    assert "serve-reward imagereward-package" in str(info.value)
    with pytest.raises(MissingWeightsError, match="bert-base-uncased"):
        ImageReward(ImageReward.Config(checkpoint=str(make_tiny_imagereward() / "ImageReward.pt")))


def test_package_path_without_the_package_says_how_to_serve_it():
    try:
        import ImageReward as _  # noqa: F401, N813
    except ImportError:
        with pytest.raises(UserError, match="serve-reward imagereward-package"):
            ImageRewardPackage(ImageRewardPackage.Config())
    else:
        pytest.skip("image-reward installed: this is a server environment")


# ---- preprocessing and tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(512, 512), (320, 256), (256, 320), (64, 64), (224, 224), (225, 300)])
def test_preprocessing_equals_torchvisions_transforms(size):
    """The package's transform, Resize(224, BICUBIC) + CenterCrop(224) + Normalize, run by torchvision on
    the float tensor (antialiased, as PIL): ours is the same to float rounding, shapes and offsets included."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

    from drpo_bench.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    transform = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC, antialias=True), CenterCrop(224),
                         Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    image = _smooth(*size, seed=sum(size))
    torch.testing.assert_close(imagereward_pixels(image, 224), transform(image), atol=1e-5, rtol=0)


def test_resize_follows_torchvisions_size_rule():
    assert resized_size(512, 512, 224) == (224, 224)
    assert resized_size(320, 256, 224) == (280, 224)
    assert resized_size(300, 225, 224) == (298, 224)  # int(224 * 300 / 225) = 298, truncated


def test_tokens_are_cls_pieces_sep_truncated_and_padded_to_35(reward):
    long = " ".join(["a red cat on a beach"] * 10)
    ids, mask = reward.model.tokens(["a cat", long], torch.device("cpu"))
    tok = reward.model.tokenizer
    assert ids.shape == (2, 35) and mask.shape == (2, 35)
    assert ids[0, 0] == tok.cls_token_id and ids[0, 3] == tok.sep_token_id and int(mask[0].sum()) == 4
    assert bool((ids[0, 4:] == tok.pad_token_id).all())
    assert int(mask[1].sum()) == 35 and ids[1, -1] == tok.sep_token_id  # truncated: [SEP] kept last
    assert len(tok) == tok.vocab_size + 2  # [DEC] and [ENC] added as BLIP's init_tokenizer


# ---- the score ---------------------------------------------------------------------------------------


def test_score_is_the_standardized_mlp_on_cls(reward):
    """Recompute by hand with transformers' classes called directly: vision tokens, BERT with every image
    token as cross-attention memory (an explicit all-ones image mask, as the package passes), MLP on [CLS]."""
    net = reward.model.network
    images = _smooth(64, 64, seed=3, batch=2)
    pixels = imagereward_pixels(images, 48)
    ids, mask = reward.model.tokens(PROMPTS, torch.device("cpu"))
    with torch.no_grad():
        vision = net.vision(pixel_values=pixels).last_hidden_state  # (2, 10, 128)
        text = net.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=vision,
                        encoder_attention_mask=torch.ones(vision.shape[:2], dtype=torch.long)).last_hidden_state
        raw = net.mlp.layers(text[:, 0]).squeeze(-1)
        scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD)


def test_scores_depend_on_prompt_and_image_and_padding_does_not_leak(reward):
    a, b = _smooth(64, 64, seed=1), _smooth(64, 64, seed=2)
    with torch.no_grad():
        same_image = reward(torch.cat([a, a]), PROMPTS)
        same_prompt = reward(torch.cat([a, b]), [PROMPTS[0]] * 2)
        alone = reward(a, PROMPTS[:1])
    assert torch.isfinite(same_image).all() and same_image[0] != same_image[1]
    assert same_prompt[0] != same_prompt[1]
    assert float(alone) == pytest.approx(float(same_prompt[0]), abs=1e-5)


def test_gradient_reaches_the_pixels_and_equals_a_finite_difference(reward):
    images = _smooth(64, 64, seed=4, batch=2).requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    grad = images.grad
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    h = 1e-2
    with torch.no_grad():
        x = images.detach()
        fd = (reward(x + h * direction, PROMPTS).sum() - reward(x - h * direction, PROMPTS).sum()) / (2 * h)
    analytic = float((grad * direction).sum())
    assert float(fd) == pytest.approx(analytic, rel=2e-2)


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
    assert math.isfinite(out.loss) and math.isfinite(ctx.reward_mean())
    grads = [(n, p.grad) for n, p in generator.unet.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for _, g in grads)
    assert sum(float(g.abs().sum()) for n, g in grads if "lora_B" in n) > 0
    assert {"reward_forward", "reward_backward", "generator_backward"} <= set(record.phase_seconds)


def test_validate_accepts_draft_on_imagereward_and_refuses_it_on_the_package():
    for name in ("sd-turbo-imagereward", "sd-turbo-imagereward-tiny"):
        suite = load_suite(REPO / "suites" / "compute" / f"{name}.yaml")
        assert {m.id for m in suite.methods} == {"base", "drpo", "draft"}
    with pytest.raises(UserError, match="not differentiable"):
        load_suite(REPO / "suites" / "compute" / "sd-turbo-imagereward-tiny.yaml",
                   ["rewards={imagereward: imagereward-package}"])


@pytest.mark.slow
def test_tiny_compute_suite_runs_draft_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert main(["run", "suites/compute/sd-turbo-imagereward-tiny.yaml", "--output", str(out), "--quiet"]) == 0
    cells = sorted(p for p in out.iterdir() if p.is_dir() and (p / "cell.json").is_file())
    methods = {json.loads((c / "cell.json").read_text())["method"]["id"] for c in cells}
    assert methods == {"base", "drpo", "draft"}
    for cell in cells:
        assert (cell / "eval.json").is_file()
    assert (out / "report.md").is_file()
