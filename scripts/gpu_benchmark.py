"""Time one DrPO-shaped and one DRaFT-shaped update of the full-size networks (random weights).

    python scripts/gpu_benchmark.py --generator sd-turbo --reward hpsv3 --K 24 --effective-batch 192 \\
        --json results/compute/gpu_benchmark_h100.json
    python scripts/gpu_benchmark.py --tiny --device cpu      # tiny twins, seconds, for tests

Both updates see the same effective batch (candidates per optimizer update). DrPO: K LoRA
forwards with graph, K frozen-base forwards, no-grad decode and reward, feature encoder, the
drift loss, one backward. DRaFT: in micro-batches, LoRA forward → decode with grad → reward with
grad (gradient-checkpointed, as the paper's DRaFT) → backward through reward, VAE and UNet.
Every phase is timed by the ledger (synchronized on CUDA); the first update is a warm-up whose
FLOPs are counted (torch.utils.flop_counter on the real kernels), then ``--updates`` are timed.

Output: seconds per update, phase breakdown, peak memory, counted FLOPs, achieved TFLOP/s and
its fraction of the device's dense bf16/fp16 peak, and the FLOPs drpo_bench/phase_models.py
predicts for the same setting. The drift loss is a compact stand-in of the spec's field
(docs/drpo.md) so this script does not depend on the trainer's internals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench import architectures as arch  # noqa: E402
from drpo_bench import flops, phase_models  # noqa: E402
from drpo_bench.ledger import Ledger  # noqa: E402

#: dense bf16/fp16 tensor-core peaks (TFLOP/s), matched against torch.cuda.get_device_name
DEVICE_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A6000", 154.8),
    ("V100", 125.0),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device_peak_tflops(name: str) -> float | None:
    for key, peak in DEVICE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def alpha_bar_999() -> float:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return float(torch.cumprod(1 - betas, 0)[999])


# ---------------------------------------------------------------------------------------------
# The networks
# ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    setting: phase_models.ComputeSetting
    unet: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    vae: torch.nn.Module
    reward: torch.nn.Module
    features: torch.nn.Module | None
    device: torch.device
    dtype: torch.dtype
    reward_shape: dict[str, int]
    latent_hw: int

    @property
    def g(self) -> phase_models.GeneratorStack:
        return self.setting.generator


def build_stack(setting: phase_models.ComputeSetting, device: torch.device, dtype: torch.dtype) -> Stack:
    tiny = setting.tiny
    g = setting.generator

    def b(name: str) -> torch.nn.Module:
        return arch.build(name, device=device, dtype=dtype, tiny=tiny)

    unet = flops.attach_lora(b(g.unet), setting.lora)
    feats = b(setting.features.component) if setting.features.component else None
    reward_arch = arch.get(setting.reward.component)
    shape = reward_arch.shape(setting.reward.shape if not tiny else None, tiny=tiny)
    res = arch.get(g.unet).shape(tiny=tiny)["resolution"]
    return Stack(setting, unet, [b(t) for t in g.text_encoders], b(g.vae), b(setting.reward.component), feats,
                 device, dtype, shape, res // 8)


def set_checkpointing(module: torch.nn.Module | None, on: bool) -> None:
    """Gradient checkpointing on/off for diffusers, transformers and open_clip modules."""
    if module is None:
        return
    inner = getattr(module, "backbone", module)  # HPSv3Model wraps a transformers model
    if hasattr(inner, "enable_gradient_checkpointing"):  # diffusers
        inner.enable_gradient_checkpointing() if on else inner.disable_gradient_checkpointing()
    elif hasattr(inner, "gradient_checkpointing_enable"):  # transformers: active in train mode only
        arch.hf_checkpointing(inner, on)
        module.train(on)
    elif hasattr(inner, "set_grad_checkpointing"):  # open_clip
        inner.set_grad_checkpointing(on)
    for sub in getattr(module, "children", lambda: [])():
        if isinstance(sub, torch.nn.Module) and sub is not inner and hasattr(sub, "gradient_checkpointing_enable"):
            set_checkpointing(sub, on)


@torch.no_grad()
def encode(s: Stack, n_prompts: int) -> dict[str, torch.Tensor]:
    """Random prompts through the frozen text encoders: (P, 77, D) states (+ pooled for SDXL)."""
    tokens = arch.get(s.g.text_encoders[0]).shape(tiny=s.setting.tiny)["text_tokens"]
    ids = torch.randint(0, 49407, (n_prompts, tokens), device=s.device)
    states, pooled = [], None
    for te in s.text_encoders:
        out = te(input_ids=ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    cond = {"encoder_hidden_states": torch.cat(states, dim=-1)}
    if pooled is not None:  # SDXL: pooled text and (orig size, crop, target size) time ids
        cond["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.zeros(n_prompts, 6, device=s.device, dtype=s.dtype)}
    return cond


def rows(cond: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    return {k: rows(v, index) if isinstance(v, dict) else v[index] for k, v in cond.items()}


def sample(s: Stack, noise: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    """One step from t=999: x0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ. (B, 4, h, w) → (B, 4, h, w)."""
    ab = alpha_bar_999()
    t = torch.full((noise.shape[0],), 999, device=s.device, dtype=torch.long)
    eps = s.unet(noise, t, **cond).sample
    return (noise - math.sqrt(1 - ab) * eps) / math.sqrt(ab)


def decode(s: Stack, latents: torch.Tensor) -> torch.Tensor:
    img = s.vae.decode(latents / s.vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
    return (img.clamp(-1, 1) + 1) / 2


def qwen_patches(images: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, 3, H, W) → (B·gh·gw, 3·temporal·patch²), Qwen2-VL's processor layout (frame repeated)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.unsqueeze(1).expand(b, temporal, c, h, w)
    x = x.reshape(b, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (B, gh/m, gw/m, m, m, C, T, P, P)
    return x.reshape(b * gh * gw, c * temporal * patch * patch)


def score(s: Stack, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → (B,) reward, differentiable when grad is enabled."""
    name = s.setting.reward.component
    size = s.reward_shape["image_size"]
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).to(s.dtype)
    x = (x - 0.5) / 0.25  # stand-in normalization
    b = x.shape[0]
    ids = torch.randint(2, 1000, (b, s.reward_shape["text_tokens"]), device=s.device)
    if name == "hpsv3":
        vc = s.reward.config.vision_config
        grid = torch.tensor([[1, size // vc.patch_size, size // vc.patch_size]] * b)
        inputs = {"pixel_patches": qwen_patches(x, vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size),
                  "grid_thw": grid, "input_ids": ids}
    else:
        inputs = {"pixel_values": x, "input_ids": ids}
    return arch.run(name, s.reward, inputs).float()


def feature_sets(s: Stack, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """DrPO's feature sets {key: (B, L, D)}; gradients flow to ``latents``."""
    spec = s.setting.features
    if spec.component is None:  # raw latents
        x = latents.float()
        return {"latent": x.flatten(2).transpose(1, 2), "latent_mean": x.mean((2, 3))[:, None], "latent_std": x.std((2, 3), correction=0)[:, None]}
    if spec.space == "images":
        img = F.interpolate(decode(s, latents), size=(arch.get(spec.component).shape(tiny=s.setting.tiny)["image_size"],) * 2,
                            mode="bilinear", align_corners=False).to(s.dtype)
        h = s.features(pixel_values=img).last_hidden_state.float()  # (B, 1 + patches, D)
        return {"patch_mean": h[:, 1:].mean(1, keepdim=True), "patch_std": h[:, 1:].std(1, keepdim=True, correction=0), "cls": h[:, :1]}
    f = s.features(latents.to(s.dtype))
    x = f[f"layer{len(f)}"].float()  # (B, C, h, w): stage 4
    out = {"mean": x.mean((2, 3))[:, None], "std": x.std((2, 3), correction=0)[:, None]}
    b, c, hh, ww = x.shape
    for p in (2, 4):
        if hh % p == 0 and hh >= p:
            patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p, c)
            out[f"mean_{p}"], out[f"std_{p}"] = patches.mean(2), patches.std(2, correction=0)
    return out


def drift_loss(gen: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, weight: float = 3000.0,
               taus: tuple[float, ...] = (0.02, 0.05, 0.2), neg_is_gen: bool = False) -> torch.Tensor:
    """Stand-in of the spec's batch drift field on one pooled set: gen (N, D), pos (P, D), neg (Q, D)."""
    n, d = gen.shape
    with torch.no_grad():
        g = gen.detach()
        targets = torch.cat([g, neg, pos])  # (M, D)
        w = torch.cat([torch.ones(n, device=g.device), torch.full((len(neg) + len(pos),), weight, device=g.device)])
        dist = torch.cdist(g, targets)  # (N, M)
        scale = ((dist * w).sum() / (w.sum() * n)).clamp_min(1e-3) / math.sqrt(d)
        dist, gs, ts = dist / scale, g / scale, targets / scale
        force = torch.zeros_like(gs)
        eye = torch.eye(n, dtype=torch.bool, device=g.device)
        for tau in taus:
            logits = -dist / tau
            logits[:, :n] = logits[:, :n].masked_fill(eye, -1e9)
            if neg_is_gen:
                logits[:, n : n + len(neg)] = logits[:, n : n + len(neg)].masked_fill(eye, -1e9)
            a = (logits.softmax(1) * logits.softmax(0)).sqrt().clamp_min(1e-6) * w
            a_neg, a_pos = a[:, : n + len(neg)], a[:, n + len(neg) :]
            c = torch.cat([-a_neg * a_pos.sum(1, keepdim=True), a_pos * a_neg.sum(1, keepdim=True)], 1)
            f = c @ ts - c.sum(1, keepdim=True) * gs
            force += f / f.pow(2).mean().sqrt().clamp_min(1e-8)
        goal = gs + force
    return (gen / scale - goal).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# The two updates
# ---------------------------------------------------------------------------------------------


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def drpo_update(s: Stack, ledger: Ledger, opt: torch.optim.Optimizer, micro: int, lambda_ref: float = 0.2) -> None:
    st = s.setting
    k, lat = st.k, s.latent_hw
    for _ in range(st.prompts):
        with ledger.phase("sample"):
            cond = rows(encode(s, 1), torch.zeros(k, dtype=torch.long, device=s.device))  # (K, ...)
            noise = torch.randn(k, 4, lat, lat, device=s.device, dtype=s.dtype)
            x = sample(s, noise, cond)  # graph kept for the backward
        with ledger.phase("reference"), torch.no_grad(), _no_lora(s.unet):
            x_ref = torch.cat([sample(s, noise[c], rows(cond, torch.arange(c.start, c.stop, device=s.device))) for c in chunks(k, micro)])
        with ledger.phase("decode"), torch.no_grad():
            images = torch.cat([decode(s, x[c].detach()) for c in chunks(k, micro)])
        with ledger.phase("reward_forward"), torch.no_grad():
            scores = torch.cat([score(s, images[c]) for c in chunks(k, micro)])
        order = scores.argsort(descending=True)
        top, bottom = order[: st.n_pos], order[-st.n_neg :]
        with ledger.phase("features"):
            z = feature_sets(s, x)
            with torch.no_grad():
                z_ref = feature_sets(s, x_ref)
        with ledger.phase("loss"):
            loss = torch.zeros((), device=s.device)
            for key, zj in z.items():
                gen = zj.flatten(0, 1)  # (K·L, D) pooled set
                pos = zj[top].detach().flatten(0, 1)
                neg = zj[bottom].detach().flatten(0, 1)
                ref = z_ref[key].flatten(0, 1)
                loss = loss + drift_loss(gen, pos, neg) + lambda_ref * drift_loss(gen, ref, gen.detach(), neg_is_gen=True)
        with ledger.phase("generator_backward"):
            (loss / st.prompts).backward()
    with ledger.phase("optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)


class _no_lora:  # noqa: N801 - context manager: the frozen base answers (LoRA layers bypassed)
    def __init__(self, module: torch.nn.Module) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]

    def __enter__(self) -> None:
        for m in self.layers:
            m.enable_adapters(False)

    def __exit__(self, *exc: object) -> None:
        for m in self.layers:
            m.enable_adapters(True)


def draft_update(s: Stack, ledger: Ledger, opt: torch.optim.Optimizer, micro: int) -> None:
    st = s.setting
    lat = s.latent_hw
    with ledger.phase("sample"):
        cond_all = encode(s, st.prompts)
    prompt_of = torch.arange(st.effective_batch, device=s.device) // st.k
    for c in chunks(st.effective_batch, micro):
        with ledger.phase("sample"):
            noise = torch.randn(c.stop - c.start, 4, lat, lat, device=s.device, dtype=s.dtype)
            x = sample(s, noise, rows(cond_all, prompt_of[c]))
        with ledger.phase("decode"):
            images = decode(s, x)
        with ledger.phase("reward_forward"):
            loss = -score(s, images).sum() / st.effective_batch
        with ledger.phase("reward_backward"):
            (grad_images,) = torch.autograd.grad(loss, images)
        with ledger.phase("generator_backward"):
            images.backward(grad_images)
    with ledger.phase("optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)


UPDATES: dict[str, Callable[..., None]] = {"drpo": drpo_update, "draft": draft_update}


def run_method(method: str, s: Stack, args: argparse.Namespace) -> dict[str, Any]:
    draft = method == "draft"
    set_checkpointing(s.unet, args.checkpoint_generator)
    set_checkpointing(s.vae, draft and args.draft_checkpointing)
    set_checkpointing(s.reward, draft and args.draft_checkpointing)
    params = [p for p in s.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    ledger = Ledger(s.device, count_flops=True)
    micro = args.micro_batch if not draft else args.draft_micro_batch
    try:
        for _ in range(1 + args.updates):  # the first (warm-up) update counts FLOPs
            with ledger.update():
                UPDATES[method](s, ledger, opt, micro)
    except torch.cuda.OutOfMemoryError as exc:  # "when memory allows": report, do not crash
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return {"error": f"CUDA out of memory: {str(exc).splitlines()[0]}. Try a smaller --micro-batch or --reward pickscore."}
    summary = ledger.summary()
    checkpointed = ["generator"] if args.checkpoint_generator else []
    if draft and args.draft_checkpointing:
        checkpointed += ["vae", "reward"]
    predicted = phase_models.price(
        dataclasses.replace(s.setting, checkpointing=frozenset(checkpointed)),
        phase_models.get_phase_model(method).fn(s.setting),
        method,
    )
    achieved = summary.get("achieved_flops_per_second")
    peak = device_peak_tflops(torch.cuda.get_device_name(s.device)) if s.device.type == "cuda" else None
    return {
        "seconds_per_update": summary["seconds_per_update"],
        "seconds_per_update_min": summary["seconds_per_update_min"],
        "phase_seconds": summary["phase_seconds"],
        "backward_seconds": sum(v for k, v in summary["phase_seconds"].items() if k in ("reward_backward", "generator_backward")),
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "peak_memory_kind": summary["peak_memory_kind"],
        "phase_peak_memory_bytes": summary["phase_peak_memory_bytes"],
        "counted_flops_per_update": summary["flops_per_update"],
        "counted_phase_flops": summary["phase_flops"],
        "predicted_flops_per_update": predicted.total,
        "predicted_phase_flops": predicted.phase_flops,
        "gradient_checkpointing": checkpointed,
        "achieved_tflops": achieved / 1e12 if achieved else None,
        "fraction_of_peak": (achieved / 1e12 / peak) if (achieved and peak) else None,
        "updates_timed": summary["updates_averaged"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generator", default="sd-turbo", choices=sorted(phase_models.GENERATORS))
    p.add_argument("--reward", default="hpsv3", choices=sorted(phase_models.REWARDS))
    p.add_argument("--features", default=None, choices=sorted(phase_models.FEATURES))
    p.add_argument("--methods", default="drpo,draft")
    p.add_argument("--K", dest="k", type=int, default=None, help="candidates per prompt (default: the generator's)")
    p.add_argument("--effective-batch", type=int, default=None, help="candidates per update (default 8·K)")
    p.add_argument("--n-pos", type=int, default=8)
    p.add_argument("--n-neg", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=8, help="DrPO: candidates per no-grad forward chunk")
    p.add_argument("--draft-micro-batch", type=int, default=2, help="DRaFT: candidates per backprop chunk (memory)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=None, help="default cuda when available")
    p.add_argument("--updates", type=int, default=2, help="timed updates after one warm-up")
    p.add_argument("--checkpoint-generator", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient checkpointing of the UNet in both methods (public code: on)")
    p.add_argument("--draft-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="DRaFT: checkpoint the reward and the VAE decoder (paper: checkpointed HPSv3)")
    p.add_argument("--tiny", action="store_true", help="tiny twins of every network (CPU tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = phase_models.make_setting(
        args.generator, args.reward, features=args.features, k=args.k, effective_batch=args.effective_batch,
        n_pos=args.n_pos, n_neg=args.n_neg, tiny=args.tiny,
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    stack = build_stack(setting, device, dtype)
    build_seconds = time.perf_counter() - t0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {m: run_method(m, stack, args) for m in methods}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "device_peak_tflops_dense": device_peak_tflops(name) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "setting": {
            "generator": setting.generator.name, "reward": setting.reward.name, "features": setting.features.name,
            "K": setting.k, "effective_batch": setting.effective_batch, "prompts_per_update": setting.prompts,
            "n_pos": setting.n_pos, "n_neg": setting.n_neg, "micro_batch": args.micro_batch,
            "draft_micro_batch": args.draft_micro_batch,
        },
        "build_seconds": build_seconds,
        "methods": results,
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda if device.type == "cuda" else None},
    }
    if "drpo" in results and "draft" in results and "error" not in results["drpo"] and "error" not in results["draft"]:
        out["draft_over_drpo_seconds"] = results["draft"]["seconds_per_update"] / results["drpo"]["seconds_per_update"]
    text = json.dumps(out, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
