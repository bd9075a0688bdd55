"""In-process ``imagereward`` against the authors' ``image-reward`` package, on the same random weights.

The package runs in its own environment (``bash scripts/make_imagereward_env.sh``; its path from
``$IMAGEREWARD_VENV``, else ``.venv-imagereward`` in the checkout): ``tests/imagereward_official_side.py``
builds the package's model (the real ViT-L/16 at 224, a 2-layer 768-wide BERT from a tiny med_config,
a tiny WordPiece vocabulary as ``bert-base-uncased``) with random weights, saves ``ImageReward.pt``,
loads it back with the package's loader and scores PNG images with its public ``score``. Here the
in-process reward loads the same file and scores the same images and prompts, from the same 8-bit
pixels; the package's PIL resize rounds to 8 bits and clips after each of its two passes, ours stays
in float, so the two agree to a small relative difference, not bit for bit (within 1e-3 on natural-like
images; a synthetic full-contrast edge image, where bicubic overshoots furthest, has its own bound).
The gradient is checked against the package's own differentiable ``score_gard`` and a finite difference. Slow (a ViT-L forward and backward on the
CPU on both sides, about a minute each); skipped, saying why, where the second environment is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from drpo_bench.registry import REWARDS
from drpo_bench.rewards.imagereward_model import IMAGEREWARD_MEAN, IMAGEREWARD_STD, imagereward_pixels
from drpo_bench.weights.tiny import TINY_IMAGEREWARD_TEXT, write_tiny_bert_tokenizer

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("IMAGEREWARD_VENV", REPO / ".venv-imagereward"))
PYTHON = VENV / "bin" / "python"
SIDE = REPO / "tests" / "imagereward_official_side.py"

PROMPTS = [
    "a photo of a red cat",
    "Two DOGS on a beach at sunset, highly detailed oil painting; café, 4k!",
    # 60+ word pieces: the 35-token truncation decides what the model reads
    "a very detailed cinematic digital painting of an old city street at night with snow, blue and yellow "
    "light, a man and a woman with a small child, two horses, a big tree, flowers and a river in the dark",
]
#: natural-like images (smooth at three scales, about 1% of pixels saturated at 0 or 255) in the
#: sizes a generator gives: downscaled, non-square both ways, upscaled, already 224
IMAGES = {"square512": (512, 512), "tall320x256": (320, 256), "wide300x400": (300, 400), "up64": (64, 64),
          "exact224": (224, 224)}
#: a synthetic worst case: full-contrast black/white blocks, where bicubic overshoots furthest and PIL
#: clips between its two 8-bit resize passes (we keep the overshoot: see imagereward_model.py)
EDGES = "edges512"
EDGES_BOUND = 2e-3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PYTHON.is_file(), reason=(
        f"the image-reward environment is absent ({PYTHON} not found): build it with "
        "`bash scripts/make_imagereward_env.sh` or point $IMAGEREWARD_VENV at one")),
]


def _image(h: int, w: int, seed: int, edges: bool = False) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = sum(F.interpolate(torch.rand(1, 3, max(h // s, 2), max(w // s, 2), generator=g), size=(h, w), mode="bicubic",
                          align_corners=False) * weight for s, weight in ((64, 0.6), (16, 0.3), (4, 0.15)))
    x = ((x - 0.1) * 1.25).clamp(0, 1)  # some pixels saturate, as in generated images
    if edges:
        x[..., : h // 3, : w // 4] = 1.0
        x[..., : h // 3, w // 4: w // 3] = 0.0
    return (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def run_official(work: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """Write the inputs into ``work``, run the official side there; (images, gradient-check pixels, its results)."""
    vocab = write_tiny_bert_tokenizer(work / "bert-base-uncased")
    med = dict(TINY_IMAGEREWARD_TEXT, hidden_size=768, num_attention_heads=12, intermediate_size=256,
               vocab_size=vocab + 2, encoder_width=768)  # 768: the package's MLP(768) is fixed
    (work / "med_config.json").write_text(json.dumps(med))
    (work / "images").mkdir()
    arrays = {}
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        arrays[name] = _image(h, w, seed=i)
    arrays[EDGES] = _image(512, 512, seed=9, edges=True)
    for name, array in arrays.items():
        Image.fromarray(array).save(work / "images" / f"{name}.png")
    (work / "prompts.json").write_text(json.dumps(PROMPTS))
    images = {k: torch.from_numpy(v).permute(2, 0, 1)[None].float() / 255 for k, v in arrays.items()}
    pixels = torch.cat([imagereward_pixels(images[k], 224) for k in ("square512", "tall320x256", EDGES)])
    torch.save(pixels, work / "pixels.pt")  # (3, 3, 224, 224): the gradient check's inputs
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    run = subprocess.run([str(PYTHON), str(SIDE), str(work)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, f"official side failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return images, pixels, json.loads((work / "official.json").read_text())


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    work = tmp_path_factory.mktemp("imagereward-official")
    return (work, *run_official(work))


@pytest.fixture(scope="module")
def ours(official):
    work = official[0]
    return REWARDS.build("imagereward", {"checkpoint": str(work / "ImageReward.pt"), "tokenizer": str(work / "bert-base-uncased"),
                                         "device": "cpu", "dtype": "fp32"})


def test_the_official_model_is_the_real_vit_l(official, ours):
    result = official[3]
    assert result["vision_blocks"] == 24 and result["vision_width"] == 1024
    cfg = ours.model.network.vision.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.image_size) == (24, 1024, 16, 224)


def test_tokens_equal_the_packages_including_the_35_token_truncation(official, ours):
    ids, mask = ours.model.tokens(PROMPTS, torch.device("cpu"))
    assert ids.tolist() == official[3]["input_ids"]
    assert ids.shape == (3, 35) and int(mask[2].sum()) == 35, "the long prompt fills all 35 tokens"


def test_scores_equal_the_packages_within_1e_3_relative(official, ours):
    _, images, _, result = official
    theirs = torch.tensor(result["scores"])  # (images, prompts), the package's public score()
    with torch.no_grad():
        mine = torch.stack([ours(images[name.removesuffix(".png")].expand(len(PROMPTS), -1, -1, -1), PROMPTS)
                            for name in result["files"]])
    rel = (mine - theirs).abs() / theirs.abs()  # (images, prompts)
    names = [f.removesuffix(".png") for f in result["files"]]
    natural = torch.tensor([n != EDGES for n in names])
    worst, edges = float(rel[natural].max()), float(rel[~natural].max())
    per_image = ", ".join(f"{n} {float(r.max()):.1e}" for n, r in zip(names, rel))
    print(f"\nImageReward in process vs package: worst relative score difference {worst:.2e} over "
          f"{int(natural.sum()) * len(PROMPTS)} (image, prompt) pairs ({per_image}); the full-contrast edge "
          f"image {edges:.2e}; scores {theirs.min():.3f}..{theirs.max():.3f}")
    assert float(theirs.max() - theirs.min()) > 0.1, "the weights must separate images and prompts, or equality shows nothing"
    assert float(rel[names.index("exact224")].max()) < 1e-5, "no resize: the same pixels, the same model"
    assert worst < 1e-3
    assert edges < EDGES_BOUND


def test_the_serve_side_adapter_equals_the_package(official):
    result = official[3]
    adapter, theirs = torch.tensor(result["adapter"]), torch.tensor(result["scores"])
    rel = float(((adapter - theirs).abs() / theirs.abs()).max())
    print(f"\nserve-side adapter vs package score(): worst relative difference {rel:.2e}")
    assert rel < 1e-5


def test_serve_reward_imagereward_package_through_remote_equals_the_package(official):
    """The users' path: `drpo-bench serve-reward imagereward-package` in the package's environment, the
    `remote` reward here; PNG carries the 8-bit images exactly, so the scores are the package's."""
    work, images, _, result = official
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "drpo_bench.commands.serve", "imagereward-package", "--port", "0", "--host", "127.0.0.1",
         "--arg", f"checkpoint={work / 'ImageReward.pt'}", "--arg", f"med_config={work / 'med_config.json'}",
         "--arg", "device=cpu"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:  # the package prints its own loading lines first
            seen.append(line)
            if line.startswith("serving"):
                break
        else:
            raise AssertionError(f"server did not start: {seen} {proc.stderr.read()[-3000:]}")
        url = line.split(" at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        remote = REWARDS.build("remote", {"url": url, "expected_name": "imagereward-package"})
        assert remote.report_scale == 10.0 and not remote.differentiable
        served = torch.stack([remote(images[f.removesuffix(".png")].expand(len(PROMPTS), -1, -1, -1), PROMPTS)
                              for f in result["files"]])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    theirs = torch.tensor(result["scores"])
    rel = float(((served - theirs).abs() / theirs.abs()).max())
    print(f"\nserve-reward imagereward-package through remote vs package score(): worst relative difference {rel:.2e}")
    assert rel < 1e-5


def test_gradient_equals_the_packages_and_a_finite_difference(official, ours):
    _, images, pixels, _ = official
    theirs = torch.load(official[0] / "official_grad.pt")
    net = ours.model.network
    x = pixels.clone().requires_grad_(True)
    ids, mask = ours.model.tokens(PROMPTS, torch.device("cpu"))
    mine = (net(x, ids, mask) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
    mine.sum().backward()
    torch.testing.assert_close(mine.detach(), theirs["scores"], rtol=1e-4, atol=1e-5)
    assert float(theirs["grad"].abs().sum()) > 0 and torch.isfinite(x.grad).all()
    grad_rel = float((x.grad - theirs["grad"]).norm() / theirs["grad"].norm())

    # through the whole reward (resize, crop, normalization) w.r.t. the [0, 1] image: autograd vs
    # a central difference along a random direction
    image = images[EDGES].clone().requires_grad_(True)  # overshooting pixels included
    ours(image, PROMPTS[:1]).sum().backward()
    grad = image.grad
    direction = torch.randn(image.shape, generator=torch.Generator().manual_seed(3))
    h = 1e-2
    with torch.no_grad():
        fd = (ours(image + h * direction, PROMPTS[:1]) - ours(image - h * direction, PROMPTS[:1])) / (2 * h)
    analytic = float((grad * direction).sum())
    fd_rel = abs(float(fd) - analytic) / abs(analytic)
    print(f"\ngradient: vs the package's score_gard {grad_rel:.2e} relative (L2); along a random direction "
          f"autograd {analytic:.5f}, central difference {float(fd):.5f} (relative {fd_rel:.2e}); "
          f"|grad| {float(grad.norm()):.3e}, finite {bool(torch.isfinite(grad).all())}")
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    assert grad_rel < 1e-3
    assert fd_rel < 2e-2
