"""The reward zoo on tiny random weights, loaded through the same loaders real weights take."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.registry import GENERATORS, REWARDS
from drpo_bench.rewards.aesthetic import Aesthetic
from drpo_bench.rewards.clip_score import CLIPScore
from drpo_bench.rewards.geneval_owl import GenEvalOwl
from drpo_bench.rewards.geneval_parse import ObjectSpec, parse_prompt
from drpo_bench.rewards.hpsv2 import HPSv2
from drpo_bench.rewards.hpsv3 import HPSv3
from drpo_bench.rewards.imagereward import ImageReward, ImageRewardPackage
from drpo_bench.rewards.jpeg import JPEGCompressibility
from drpo_bench.rewards.pickscore import PickScore
from drpo_bench.weights.tiny import make_tiny_clip

PROMPTS = ["a photo of a red cat", "two dogs on a beach"]
DIFFERENTIABLE = ["pickscore-tiny", "clip-score-tiny", "aesthetic-tiny", "hpsv2-tiny"]


@pytest.fixture(scope="module")
def generator():
    return GENERATORS.build("sd-turbo-tiny")


@pytest.fixture(scope="module")
def rewards():
    return {name: REWARDS.build(name) for name in DIFFERENTIABLE}


def test_registered_names():
    names = {PickScore: "pickscore", CLIPScore: "clip-score", HPSv2: "hpsv2",
             Aesthetic: "aesthetic", JPEGCompressibility: "jpeg", GenEvalOwl: "geneval-owl", HPSv3: "hpsv3",
             ImageReward: "imagereward", ImageRewardPackage: "imagereward-package"}
    for cls, name in names.items():
        assert cls.registry_name == name
    # tiny twins are presets of the real classes (weights from tiny:<twin>), not sibling classes
    for tiny, cls in {"pickscore-tiny": PickScore, "hpsv2-tiny": HPSv2, "aesthetic-tiny": Aesthetic,
                      "clip-score-tiny": CLIPScore, "geneval-owl-tiny": GenEvalOwl, "hpsv3-tiny": HPSv3,
                      "imagereward-tiny": ImageReward}.items():
        entry = REWARDS.get(tiny)
        assert entry.cls is cls and any(str(v).startswith("tiny:") for v in entry.preset.values())


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_reward_backprops_into_lora(name, rewards, generator):
    reward = rewards[name]
    assert reward.differentiable
    cond = generator.encode(PROMPTS)
    noise = generator.noise(2, torch.Generator().manual_seed(0)) * 0.02  # small noise: unsaturated pixels
    generator.unet.zero_grad()
    with torch.no_grad():  # LoRA B starts at zero, which blocks the gradient to A: make B non-zero
        for name, p in generator.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    images = generator.decode(generator.sample(noise, cond))
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    grads = [p.grad for p in generator.trainable_parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_pickscore_equals_clipmodel_logits(rewards):
    """At the model's own resolution, our torch preprocessing is the processor's: same logits."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = make_tiny_clip()
    model, tok = CLIPModel.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    proc = CLIPImageProcessor.from_pretrained(folder)
    images = (torch.rand(2, 3, 32, 32) * 255).round() / 255
    pixels = proc(images=list((images * 255).round().to(torch.uint8)), return_tensors="pt", do_rescale=True).pixel_values
    text = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(rewards["pickscore-tiny"](images, PROMPTS), logits.diagonal(), rtol=1e-4, atol=1e-4)


def test_hpsv2_equals_open_clip_forward(rewards):
    reward = rewards["hpsv2-tiny"]
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = reward.model((images - mean) / std, reward.tokenizer(PROMPTS))
    image_f, text_f = out[:2] if isinstance(out, tuple) else (out["image_features"], out["text_features"])
    torch.testing.assert_close(reward(images, PROMPTS), (image_f * text_f).sum(-1), rtol=1e-4, atol=1e-5)


def test_aesthetic_is_the_head_on_normalized_embeddings(rewards):
    reward = rewards["aesthetic-tiny"]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        emb = reward.clip.model.get_image_features(pixel_values=(images - torch.tensor(
            [0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
            [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)).pooler_output
        expected = reward.head(F.normalize(emb, dim=-1)).squeeze(-1)
    torch.testing.assert_close(reward(images, ["ignored", "ignored"]), expected, rtol=1e-4, atol=1e-5)
    assert set(reward.head.state_dict()) == {f"layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias")}


def test_jpeg_is_a_black_box():
    reward = JPEGCompressibility()
    flat, noisy = torch.full((1, 3, 64, 64), 0.5), torch.rand(1, 3, 64, 64)
    images = torch.cat([flat, noisy])
    scores = reward(images, ["a", "b"])
    assert not reward.differentiable and scores[0] > scores[1]
    inverse = JPEGCompressibility(JPEGCompressibility.Config(mode="incompressibility"))
    torch.testing.assert_close(inverse(images, ["a", "b"]), -scores)


def test_geneval_prompt_parsing():
    spec = parse_prompt("a photo of four traffic lights")
    assert spec.objects == (ObjectSpec("traffic light", 4),)
    spec = parse_prompt("a photo of a red car and a blue bench")
    assert [(o.name, o.color) for o in spec.objects] == [("car", "red"), ("bench", "blue")]
    spec = parse_prompt("A photo of a dog right of a teddy bear.")
    assert spec.relation == "right of" and spec.objects[1].name == "teddy bear"
    assert parse_prompt("two red squares").objects == (ObjectSpec("square", 2, "red"),)
    assert parse_prompt("a photo of a cat").n_constraints() == 1
    with pytest.raises(ValueError):
        parse_prompt("a photo of red")


def test_geneval_owl_scores_with_a_tiny_detector():
    reward = REWARDS.build("geneval-owl-tiny")
    images = torch.rand(3, 3, 64, 64)
    prompts = ["a photo of two cats", "a photo of a red car and a blue bench", "a photo of a cat left of a dog"]
    scores = reward(images, prompts)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    strict = REWARDS.build("geneval-owl-tiny", {"threshold": 1.01, "partial_credit": False})  # nothing detected
    assert strict(images, prompts).tolist() == [0.0, 0.0, 0.0]
    # the constraint list: 2 objects + 2 colors; without detections every one fails
    assert strict.check((images[0].permute(1, 2, 0) * 255).byte().numpy(), parse_prompt(prompts[1])) == [False] * 4
    assert strict(images[:1], ["???"]).tolist() == [0.0]
    with pytest.raises(UserError, match="cannot parse"):
        REWARDS.build("geneval-owl-tiny", {"strict_prompts": True})(images[:1], ["???"])


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="yuvalkirstain/PickScore_v1"):
        PickScore(PickScore.Config())
    with pytest.raises(MissingWeightsError, match="no folder at"):
        PickScore(PickScore.Config(pretrained=str(tmp_path / "none")))
    with pytest.raises(MissingWeightsError, match=r"HPS_v2_compressed\.pt"):  # the default: v2.0
        HPSv2(HPSv2.Config())
    with pytest.raises(MissingWeightsError, match=r"HPS_v2\.1_compressed\.pt"):
        HPSv2(HPSv2.Config(version="v2.1"))
    with pytest.raises(MissingWeightsError, match="improved-aesthetic-predictor"):
        Aesthetic(Aesthetic.Config(clip=str(make_tiny_clip()), head=str(tmp_path / "head.pth")))
    with pytest.raises(MissingWeightsError, match="owlv2"):
        GenEvalOwl(GenEvalOwl.Config())


@pytest.mark.skipif(importlib.util.find_spec("hpsv3") is not None, reason="hpsv3 installed: this is a server env")
def test_hpsv3_here_says_how_to_serve_it():
    with pytest.raises(UserError, match="serve-reward hpsv3"):
        HPSv3(HPSv3.Config())


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="ImageReward installed")
def test_imagereward_package_here_says_how_to_serve_it():
    with pytest.raises(UserError, match="serve-reward imagereward-package"):
        ImageRewardPackage(ImageRewardPackage.Config())


# ---- definitions and reporting scales (the paper's tables) ---------------------------------------
def _samples(images: torch.Tensor, prompts: list[str], tasks: list[str | None] | None = None):
    from drpo_bench.metrics.base import EvalSamples

    n = len(prompts)
    return EvalSamples(images=images, latents=torch.zeros(n, 1), prompts=prompts, groups=torch.arange(n),
                       tasks=tasks or [None] * n)


def _tiny_clip_cosine(images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """cos(image, text) written out with transformers' own CLIPModel and processors; and exp(logit_scale)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = make_tiny_clip()
    model, tok = CLIPModel.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    proc = CLIPImageProcessor.from_pretrained(folder)
    pixels = proc(images=list((images * 255).round().to(torch.uint8)), return_tensors="pt", do_rescale=True).pixel_values
    text = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_f = model.get_image_features(pixel_values=pixels)
        text_f = model.get_text_features(input_ids=text.input_ids, attention_mask=text.attention_mask)
    image_f = getattr(image_f, "pooler_output", image_f)  # transformers 5 returns an output object
    text_f = getattr(text_f, "pooler_output", text_f)
    cos = (image_f / image_f.norm(dim=-1, keepdim=True) * (text_f / text_f.norm(dim=-1, keepdim=True))).sum(-1)
    return cos, float(model.logit_scale.detach().exp())


def test_clip_score_default_is_the_raw_cosine_and_clipscore_is_selectable(rewards):
    from drpo_bench.metrics.reward_metric import RewardMetric

    images = (torch.rand(2, 3, 32, 32) * 255).round() / 255  # 8-bit exact: our preprocessing is the processor's
    cos, _ = _tiny_clip_cosine(images)
    reward = rewards["clip-score-tiny"]
    assert CLIPScore.Config().formula == "cosine" and REWARDS.get("clip-score-tiny").parse_config({}).formula == "cosine"
    torch.testing.assert_close(reward(images, PROMPTS), cos, rtol=1e-4, atol=1e-5)  # training sees the cosine
    clipscore = REWARDS.build("clip-score-tiny", {"formula": "clipscore"})
    torch.testing.assert_close(clipscore(images, PROMPTS), 100 * cos.clamp(min=0), rtol=1e-4, atol=1e-4)
    # reported: the cosine x100 (the paper's CLIP column); CLIPScore already is x100
    value = RewardMetric(reward, "clip").compute(_samples(images, PROMPTS))["clip"]
    assert value.mean == pytest.approx(float(100 * cos.mean()), rel=1e-4, abs=1e-4)
    other = RewardMetric(clipscore, "clip").compute(_samples(images, PROMPTS))["clip"]
    assert other.mean == pytest.approx(float(100 * cos.clamp(min=0).mean()), rel=1e-4, abs=1e-4)
    assert value.definition["scale"] == 100 and other.definition["scale"] == 1
    assert "max" in other.definition["formula"] and "max" not in value.definition["formula"]


def test_pickscore_reports_100_cosine_while_training_sees_logit_scale_cosine(rewards):
    from drpo_bench.metrics.reward_metric import RewardMetric

    images = (torch.rand(2, 3, 32, 32) * 255).round() / 255
    cos, logit_scale = _tiny_clip_cosine(images)
    assert abs(logit_scale - 100) > 1  # the tiny twin's logit_scale is not 100: the test tells the two apart
    reward = rewards["pickscore-tiny"]
    torch.testing.assert_close(reward(images, PROMPTS), logit_scale * cos, rtol=1e-4, atol=1e-4)
    value = RewardMetric(reward, "pickscore").compute(_samples(images, PROMPTS))["pickscore"]
    assert value.mean == pytest.approx(float(100 * cos.mean()), rel=1e-4, abs=1e-4)
    assert value.definition["logit_scale"] == pytest.approx(logit_scale)
    assert value.definition["reward"] == "pickscore" and value.definition["model"].startswith("tiny:clip") and "100 * cos" in value.definition["formula"]
    assert PickScore.class_definition()["model"].startswith("yuvalkirstain/PickScore_v1")


def test_hpsv2_defaults_to_the_public_eval_version_reported_x100(rewards):
    from drpo_bench.metrics.reward_metric import RewardMetric

    assert HPSv2.Config().version == "v2.0"  # UGVly/DrPO loads HPS_v2_compressed.pt
    assert HPSv2.class_definition()["version"] == "v2.0" and HPSv2.report_scale == 100
    reward = rewards["hpsv2-tiny"]
    images = torch.rand(2, 3, 32, 32)
    value = RewardMetric(reward, "hpsv2").compute(_samples(images, PROMPTS))["hpsv2"]
    assert value.mean == pytest.approx(float(100 * reward(images, PROMPTS).mean()), rel=1e-5)


class _FixedAdapter:
    """Stands in for the image-reward package: fixed standardized scores."""

    def score(self, images, prompts):
        return torch.tensor([0.5, -0.2, 1.1])[: len(prompts)]


def test_imagereward_is_reported_x10_and_aesthetics_as_is(rewards):
    from drpo_bench.metrics.reward_metric import RewardMetric

    reward = ImageRewardPackage.__new__(ImageRewardPackage)  # the package is not installed here: only the adapter
    reward.config, reward.adapter = ImageRewardPackage.Config(), _FixedAdapter()  # is replaced
    images = torch.rand(3, 3, 8, 8)
    prompts = ["a", "b", "c"]
    value = RewardMetric(reward, "imagereward").compute(_samples(images, prompts, ["x", "x", "y"]))["imagereward"]
    assert value.mean == pytest.approx(10 * (0.5 - 0.2 + 1.1) / 3)
    assert value.per_task == pytest.approx({"x": 10 * 0.15, "y": 11.0})
    assert value.definition["scale"] == 10 and "ImageReward-v1.0" in value.definition["model"]
    aes = rewards["aesthetic-tiny"]
    assert Aesthetic.report_scale == 1
    got = RewardMetric(aes, "aesthetic").compute(_samples(images[:2], PROMPTS))["aesthetic"].mean
    assert got == pytest.approx(float(aes(images[:2], PROMPTS).mean()), rel=1e-5)


def test_remote_takes_the_served_rewards_definition_and_scale():
    from drpo_bench.rewards.remote import served_definition

    definition, scale = served_definition({"name": "imagereward"}, "http://127.0.0.1:1")
    assert scale == 10 and definition["model"] == ImageReward.definition["model"] and "127.0.0.1:1" in definition["served"]
    sent = {**CLIPScore.clipscore_definition, "scale": 1.0, "range": "x"}
    definition, scale = served_definition({"name": "clip-score", "definition": sent}, "u")
    assert scale == 1 and definition["formula"] == CLIPScore.clipscore_definition["formula"]
    definition, scale = served_definition({"name": "someone-elses"}, "u")
    assert scale == 1 and definition["model"]
