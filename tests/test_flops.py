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
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from drpo_bench import architectures as arch
from drpo_bench import flops, phase_models
from drpo_bench.errors import UserError
from drpo_bench.flops_cli import main as flops_main

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


# ---- phase models and the CLI ---------------------------------------------------------------------


def test_phase_models_tiny() -> None:
    s = phase_models.make_setting("sd-turbo", "pickscore", k=4, effective_batch=8, n_pos=1, n_neg=1, tiny=True)
    res = phase_models.compute_methods(s, ["drpo", "draft"])
    drpo, draft = res["drpo"], res["draft"]
    assert "reward_backward" not in drpo.phase_flops and drpo.phase_flops["reference"] > 0
    assert draft.phase_flops["reward_backward"] > 0 and "reference" not in draft.phase_flops
    assert draft.backward > drpo.backward
    gen = [w for w in drpo.lines if w.work.role == "generator"]
    assert {w.work.samples for w in gen} == {8}  # K × prompts candidates
    ckpt = phase_models.price(phase_models.make_setting(
        "sd-turbo", "pickscore", k=4, effective_batch=8, n_pos=1, n_neg=1, tiny=True, checkpointing={"reward"}),
        phase_models.draft_phases(s), "draft")
    recompute = [w for w in ckpt.lines if w.work.part == "recompute"]
    assert [w.work.role for w in recompute] == ["reward"]
    assert ckpt.total == pytest.approx(draft.total + recompute[0].flops)


def test_phase_model_registry_is_pluggable() -> None:
    @phase_models.register_phase_model("test-only-reward-free", "K LoRA forwards, reward forward, backward")
    def _free(s: phase_models.ComputeSetting) -> list[phase_models.Work]:
        return [s.generator_pass("sample", trainable=True), s.vae("decode", grad=False),
                s.reward_pass("reward_forward", grad=False),
                s.generator_pass("generator_backward", trainable=True, part="backward")]

    try:
        s = phase_models.make_setting("sd-turbo", "pickscore", k=2, effective_batch=2, tiny=True, n_pos=1, n_neg=1)
        assert phase_models.compute_methods(s, ["test-only-reward-free"])["test-only-reward-free"].total > 0
    finally:
        phase_models.PHASE_MODELS.pop("test-only-reward-free")


def test_setting_errors() -> None:
    with pytest.raises(UserError, match="multiple of K"):
        phase_models.make_setting("sd-turbo", "hpsv3", k=24, effective_batch=100)
    with pytest.raises(UserError, match="sdxl-turbo"):
        phase_models.make_setting("sdxl-turbo2", "hpsv3")
    with pytest.raises(UserError, match="drpo"):
        phase_models.compute_methods(phase_models.make_setting("sd-turbo", "hpsv3"), ["dpro"])


def test_flops_cli_tiny_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = flops_main(["--generator", "sd-turbo", "--reward", "hpsv3", "--methods", "drpo,draft", "--K", "4",
                     "--effective-batch", "8", "--n-pos", "1", "--n-neg", "1", "--tiny", "--grad-checkpointing",
                     "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "draft/drpo" in printed and "reward_backward" in printed
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {"drpo", "draft"}
    assert data["setting"]["grad_checkpointing"] == sorted(phase_models.CHECKPOINT_ROLES)
    assert data["ratios"]["draft/drpo"]["total"] == pytest.approx(
        data["methods"]["draft"]["total_flops"] / data["methods"]["drpo"]["total_flops"])
    assert sum(data["methods"]["drpo"]["phase_flops"].values()) == pytest.approx(data["methods"]["drpo"]["total_flops"])


def test_flops_cli_bad_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert flops_main(["--reward", "hpsv4", "--tiny"]) == 2
    assert "hpsv3" in capsys.readouterr().err


def test_committed_results_are_consistent() -> None:
    """results/compute/*.json: phases sum to totals; the paper's setting favours DrPO."""
    folder = ROOT / "results" / "compute"
    files = sorted(folder.glob("*.json"))
    assert files, f"no committed compute results in {folder}"
    for f in files:
        data = json.loads(f.read_text())
        if "ratios" not in data:
            continue  # e.g. a GPU benchmark file
        for m in data["methods"].values():
            assert sum(m["phase_flops"].values()) == pytest.approx(m["total_flops"])
            assert "reward_backward" not in m["phase_flops"] or m["description"].startswith("DRaFT")
    headline = json.loads((folder / "sd-turbo_hpsv3_ckpt.json").read_text())
    assert headline["setting"]["effective_batch"] == 192 and headline["setting"]["K"] == 24
    assert headline["ratios"]["draft/drpo"]["total"] > 2.0
    assert headline["ratios"]["draft/drpo"]["backward"] > 5.0


# ---- the GPU benchmark script, tiny on CPU -----------------------------------------------------------


def test_gpu_benchmark_tiny_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["gpu_benchmark"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.modules.pop("gpu_benchmark", None)
    threads = torch.get_num_threads()
    try:
        out = module.main(["--tiny", "--device", "cpu", "--reward", "hpsv3", "--K", "2", "--effective-batch", "2",
                           "--n-pos", "1", "--n-neg", "1", "--updates", "1", "--threads", "1",
                           "--json", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(threads)
    for method in ("drpo", "draft"):
        r = out["methods"][method]
        assert "error" not in r
        assert r["seconds_per_update"] > 0 and r["counted_flops_per_update"] > 0
        assert set(r["phase_seconds"]) >= {"sample", "decode", "reward_forward", "generator_backward", "optimizer"}
    assert "reward_backward" in out["methods"]["draft"]["phase_seconds"]
    assert "reward_backward" not in out["methods"]["drpo"]["phase_seconds"]
    assert json.loads((tmp_path / "b.json").read_text())["device"] == "cpu"
