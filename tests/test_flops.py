"""FLOP counting: attention is counted, modes differ as they should, counts match the reference.

Reference numbers: docs/architectures-reference.md (GFLOP per image). One known difference:
the reference's "fwd+bwd frozen" for the UNets also propagated gradients into the text
conditioning (encoder_hidden_states, added cond); ours stops at the latent input, because
nothing upstream of the conditioning trains. That makes ours 0.5 % (SD-Turbo) and 1.9 %
(SDXL-Turbo) lower; ``test_unet_frozen_difference_is_the_conditioning_grad`` shows the rest
matches to 0.1 %.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from drpo_bench.compute import architectures as arch
from drpo_bench.compute import flops
from drpo_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# GFLOP per image, forward (docs/architectures-reference.md)
REFERENCE_FORWARD = {
    "sd-turbo-unet": 804,
    "sd-vae-decoder": 2515,
    "sd-turbo-text-encoder": 45,
    "sdxl-turbo-unet": 1589,
    "pickscore": 382,
    "hpsv2": 382,
    "imagereward": 138,
    "hpsv3": 5903,
    "inception-v3": 11.4,
}
# (forward+backward frozen, forward+backward full)
REFERENCE_BACKWARD = {
    "sd-turbo-unet": (1735, 2409),
    "sd-vae-decoder": (5063, 7544),
    "sdxl-turbo-unet": (3233, 4714),
    "pickscore": (727, 1145),
    "imagereward": (280, 413),
    "hpsv3": (12023, 17710),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> flops.FlopCache:
    return flops.FlopCache(tmp_path_factory.mktemp("flops") / "flops.json")


@pytest.fixture(autouse=True)
def _private_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRPO_BENCH_FLOPS_CACHE", str(tmp_path / "default-cache.json"))


# ---- attention is counted -------------------------------------------------------------------


def test_attention_counted_on_meta() -> None:
    b, h, n, d = 2, 4, 64, 32
    q = torch.empty(b, h, n, d, device="meta")
    fwd, _ = flops.count_callable(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), backward=False)
    assert fwd == 4 * b * h * n * n * d  # QK^T and AV, 2 FLOPs per multiply-add


def test_attention_counted_on_cpu_real_tensors() -> None:
    """PyTorch counts CPU's fused SDPA as zero; our registered formula fixes that."""
    flops.register_cpu_attention_formulas()
    b, h, n, d = 1, 2, 16, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    fwd, bwd = flops.count_callable(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), backward=True)
    assert fwd == 4 * b * h * n * n * d
    assert bwd == 2.5 * fwd  # flash backward: 4 matmuls + the recomputed scores, vs 2 forward


# ---- modes ----------------------------------------------------------------------------------


def test_modes_on_a_linear_stack_are_exact() -> None:
    """forward 2·B·I·O per layer; frozen backward = input grads only; full adds weight grads."""
    def run(requires: str) -> tuple[float, float]:
        with torch.device("meta"):
            net = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False))
            x = torch.empty(3, 8)
        net.requires_grad_(requires == "full")
        x.requires_grad_(requires == "frozen")
        return flops.count_callable(lambda: net(x), backward=requires != "forward")

    f = 2 * 3 * (8 * 16 + 16 * 4)
    assert run("forward") == (f, 0)
    assert run("frozen") == (f, f)  # dX for both layers
    assert run("full") == (f, f + 2 * 3 * 16 * 4)  # dW for both + dX of the second only


def test_count_modes_differ_on_tiny_unet(cache: flops.FlopCache) -> None:
    counts = {m: flops.count("sd-turbo-unet", m, tiny=True, cache=cache) for m in flops.MODES}
    assert counts["forward"].backward == 0
    assert counts["forward"].trainable_params == 0 == counts["backward_frozen"].trainable_params
    lora = counts["backward_lora"]
    assert 0 < lora.trainable_params < counts["backward_full"].trainable_params
    assert lora.forward > counts["forward"].forward  # LoRA adds its own matmuls
    assert counts["backward_full"].backward > counts["backward_frozen"].backward > 0
    assert 0 < lora.backward < counts["backward_full"].backward


def test_invalid_modes_are_user_errors() -> None:
    with pytest.raises(UserError, match="backward_lora"):
        flops.count("sd-turbo-unet", "backward_lor", tiny=True)
    with pytest.raises(UserError, match="LoRA"):
        flops.count("pickscore", "backward_lora", tiny=True)


def test_counts_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = flops.FlopCache(tmp_path / "c.json")
    first = flops.count("sd-vae-decoder", tiny=True, cache=cache)
    data = json.loads((tmp_path / "c.json").read_text())
    assert any(k.startswith("sd-vae-decoder|resolution=64|forward") for k in data["entries"])

    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("a cached count must not rebuild the model")

    monkeypatch.setattr(arch, "build", no_build)
    again = flops.count("sd-vae-decoder", tiny=True, cache=flops.FlopCache(tmp_path / "c.json"))
    assert again == first


# ---- full size, forward: fast on meta ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_FORWARD))
def test_forward_flops_match_reference(name: str, cache: flops.FlopCache) -> None:
    gflop = flops.count(name, "forward", cache=cache).forward / 1e9
    assert gflop == pytest.approx(REFERENCE_FORWARD[name], rel=0.02)


def test_hpsv3_long_prompt_forward(cache: flops.FlopCache) -> None:
    gflop = flops.count("hpsv3", shape={"text_tokens": 600}, cache=cache).forward / 1e9
    assert gflop == pytest.approx(12979, rel=0.02)


# ---- full size, backward: slower (minutes on 2 cores) --------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_BACKWARD))
def test_backward_flops_match_reference(name: str, cache: flops.FlopCache) -> None:
    frozen_ref, full_ref = REFERENCE_BACKWARD[name]
    frozen = flops.count(name, "backward_frozen", cache=cache).total / 1e9
    full = flops.count(name, "backward_full", cache=cache).total / 1e9
    assert full == pytest.approx(full_ref, rel=0.02)
    assert frozen == pytest.approx(frozen_ref, rel=0.025)  # see the module docstring for UNets


@pytest.mark.slow
@pytest.mark.parametrize(("name", "reference"), [("sd-turbo-unet", 1735), ("sdxl-turbo-unet", 3233)])
def test_unet_frozen_difference_is_the_conditioning_grad(name: str, reference: float) -> None:
    a = arch.get(name)
    m = arch.build(name)
    x = a.make_inputs(m, 1, torch.device("meta"), torch.float32, a.shape())
    x["sample"].requires_grad_(True)
    x["encoder_hidden_states"].requires_grad_(True)
    for t in x.get("added_cond_kwargs", {}).values():
        t.requires_grad_(True)
    f, b = flops.count_callable(lambda: a.run(m, x), backward=True)
    assert (f + b) / 1e9 == pytest.approx(reference, rel=0.002)


# ---- the committed paper-scale results -------------------------------------------------------------


def test_committed_results_are_consistent() -> None:
    """results/compute/*.json (drpo-bench flops on the real steps): phases sum to totals, only the
    reward-backprop methods have a reward_backward phase, and the paper's setting favours DrPO."""
    folder = ROOT / "results" / "compute"
    files = sorted(folder.glob("*.json"))
    assert files, f"no committed compute results in {folder}"
    for f in files:
        data = json.loads(f.read_text())
        if "ratios" not in data:
            continue  # e.g. a GPU benchmark file
        for name, m in data["methods"].items():
            assert sum(m["phase_flops"].values()) == pytest.approx(m["total_flops"])
            assert ("reward_backward" in m["phase_flops"]) == (name in ("draft", "vggflow")), (f.name, name)
    headline = json.loads((folder / "sd-turbo_hpsv3_ckpt.json").read_text())
    assert headline["setting"]["effective_batch"] == 192 and headline["setting"]["K"] == 24
    assert set(headline["methods"]) >= {"drpo", "draft", "vggflow", "dpo", "grpo", "pso", "raft"}
    assert headline["ratios"]["draft/drpo"]["total"] > 2.0
    assert headline["ratios"]["draft/drpo"]["backward"] > 5.0


def test_gpu_benchmark_script_is_the_bench_command() -> None:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.bench_argv(["--reward", "hpsv3"])[:1] == ["bench"]


# ---- closed forms written by hand, independent of the counter's own numbers ------------------------


def test_conv_stack_is_the_closed_form() -> None:
    """A Conv2d is 2 x B x C_out x H_out x W_out x C_in x k x k FLOPs (multiply-adds x 2)."""
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 4, 3, stride=2, padding=1, bias=False))
        x = torch.empty(2, 3, 16, 16)
    fwd, _ = flops.count_callable(lambda: net(x), backward=False)
    assert fwd == 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3 + 2 * 2 * 4 * 8 * 8 * 8 * 3 * 3


def transformer_flops(tokens: int, width: int, ff: int, layers: int) -> float:
    """Forward FLOPs of a pre-norm transformer encoder: per layer the q, k, v and output projections
    (4 d^2 per token), the MLP (2 d f per token), and attention's QK^T and AV (2 N^2 d), x 2 per MAC."""
    return layers * (2 * tokens * (4 * width**2 + 2 * width * ff) + 2 * 2 * tokens**2 * width)


def test_sd_turbo_text_encoder_is_the_closed_form(cache: flops.FlopCache) -> None:
    """OpenCLIP ViT-H/14 text tower, 23 layers, width 1024, MLP 4096, 77 tokens: 45.1 GFLOP."""
    want = transformer_flops(77, 1024, 4096, 23)
    got = flops.count("sd-turbo-text-encoder", cache=cache).forward
    assert got == pytest.approx(want, rel=1e-3), f"{got / 1e9:.2f} GFLOP counted, {want / 1e9:.2f} by hand"


def test_pickscore_is_the_closed_form(cache: flops.FlopCache) -> None:
    """CLIP ViT-H/14 at 224: 256 patches + CLS through 32 layers of width 1280 (MLP 5120), the 14x14x3
    patch embedding, and the text tower (24 layers, width 1024, MLP 4096, 77 tokens); projections to
    1024 for one pooled token each: 381.7 GFLOP (the table's 382)."""
    vision = transformer_flops(257, 1280, 5120, 32) + 2 * 256 * (3 * 14 * 14) * 1280 + 2 * 1280 * 1024
    text = transformer_flops(77, 1024, 4096, 24) + 2 * 1024 * 1024
    want = vision + text
    got = flops.count("pickscore", cache=cache).forward
    assert got == pytest.approx(want, rel=1e-3), f"{got / 1e9:.2f} GFLOP counted, {want / 1e9:.2f} by hand"
    assert want / 1e9 == pytest.approx(REFERENCE_FORWARD["pickscore"], rel=2e-3)
