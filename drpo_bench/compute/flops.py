"""FLOPs of single architectures, counted on the meta device and cached (checks against the reference table).

What a whole training update costs is counted from the method's own step by drpo_bench/compute/bench.py;
this module prices one network in one mode, and registers the CPU attention formulas the ledger uses.

FLOPs are counted with ``torch.utils.flop_counter`` (2 × multiply-adds of matmuls,
convolutions and attention; elementwise work, norms and softmax are not counted, as in the
reference table of docs/architectures-reference.md). Counting runs on the ``meta`` device: no
weights, no memory, seconds even for an 8 B model, and attention is counted through its math
decomposition (``bmm``). On a CPU with real tensors PyTorch's fused attention kernel
``_scaled_dot_product_flash_attention_for_cpu`` has no FLOP formula and counts as zero;
:func:`register_cpu_attention_formulas` adds one (the ledger calls it when it counts).

Four modes, per sample:

- ``forward``: frozen weights, no grad (reference pass, no-grad decode, a reward that only ranks);
- ``backward_frozen``: frozen weights, gradient to the input only (a reward or the VAE used
  inside a loss: input grads, no weight grads);
- ``backward_lora``: LoRA adapters on ``Architecture.lora_targets`` train, base weights frozen,
  the input needs no grad (a generator being finetuned): LoRA weight grads + activation grads;
- ``backward_full``: every parameter trains (only to check the reference table).

Counts are cached per (component, shape, mode) in a small JSON file (``flops_cache_path()``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from drpo_bench.compute import architectures as arch
from drpo_bench.errors import UserError, nearest

Mode = Literal["forward", "backward_frozen", "backward_lora", "backward_full"]
MODES: dict[str, str] = {
    "forward": "frozen weights, no grad",
    "backward_frozen": "frozen weights, grad to the input only",
    "backward_lora": "LoRA trains, base frozen: LoRA grads + activation grads",
    "backward_full": "every parameter trains",
}
#: bump when counting changes, so stale cache entries are recounted
COUNT_VERSION = 1


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters for ``backward_lora`` (the paper's: rank 16 on every attention projection)."""

    rank: int = 16  # r 16, alpha 16 in the public code
    targets: tuple[str, ...] = arch.UNET_LORA_TARGETS  # to_q/to_k/to_v/to_out.0

    def key(self) -> str:
        return f"r{self.rank}:{'+'.join(self.targets)}"


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one sample through one component in one mode."""

    component: str
    mode: str
    shape: dict[str, int]
    forward: float  # FLOPs of the forward pass, per sample
    backward: float  # FLOPs of the backward pass (0 for mode "forward"), per sample
    params: int  # parameters of the component (LoRA included when attached)
    trainable_params: int  # parameters with requires_grad in this mode
    tiny: bool = False

    @property
    def total(self) -> float:
        return self.forward + self.backward


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def flops_cache_path() -> Path | None:
    """``$DRPO_BENCH_FLOPS_CACHE`` ("off" disables), else ~/.cache/drpo-bench/flops.json."""
    env = os.environ.get("DRPO_BENCH_FLOPS_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "drpo-bench" / "flops.json"


class FlopCache:
    """A JSON dict ``key -> FlopCount`` on disk (atomic writes; unreadable files are ignored)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None and self.path.exists():
                from drpo_bench.store import read_json

                try:
                    data = read_json(self.path)
                    if data.get("version") == COUNT_VERSION and data.get("torch") == torch.__version__:
                        self._entries = dict(data.get("entries", {}))
                except (ValueError, OSError, AttributeError):
                    self._entries = {}
        return self._entries

    def get(self, key: str) -> FlopCount | None:
        entry = self._load().get(key)
        return FlopCount(**entry) if entry else None

    def put(self, key: str, value: FlopCount) -> None:
        entries = self._load()
        entries[key] = asdict(value)
        if self.path is not None:
            from drpo_bench.store import write_json

            try:
                write_json(self.path, {"version": COUNT_VERSION, "torch": torch.__version__, "entries": entries})
            except OSError:
                pass  # a read-only home is no reason to fail a count


_default_cache: FlopCache | None = None


def default_cache() -> FlopCache:
    global _default_cache
    path = flops_cache_path()
    if _default_cache is None or _default_cache.path != path:
        _default_cache = FlopCache(path)
    return _default_cache


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


def register_cpu_attention_formulas() -> None:
    """Give CPU's fused SDPA kernels the same FLOP formula as the CUDA ones (idempotent)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:

        @fc.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd is not None and bwd not in fc.flop_registry:

        @fc.register_flop_formula(bwd)
        def _cpu_sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def attach_lora(module: nn.Module, lora: LoraSpec) -> nn.Module:
    """Inject LoRA adapters (peft) into ``module``; only they will require grad."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora.rank, lora_alpha=lora.rank, lora_dropout=0.0, target_modules=list(lora.targets))
    module = inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def _sum_outputs(out: Any) -> torch.Tensor:
    if torch.is_tensor(out):
        return out.float().sum()
    if isinstance(out, Mapping):
        out = list(out.values())
    return sum(_sum_outputs(o) for o in out)  # type: ignore[return-value]


def count_callable(fn: Any, *, backward: bool) -> tuple[float, float]:
    """(forward, backward) FLOPs of ``fn()`` and, if asked, of backpropagating the sum of its output."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
        fwd = counter.get_total_flops()
        if backward:
            loss = _sum_outputs(out)
            if not loss.requires_grad:
                raise RuntimeError("nothing requires grad: this mode has no backward pass")
            loss.backward()
    return float(fwd), float(counter.get_total_flops() - fwd)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        hint = ", ".join(nearest(mode, MODES))
        raise UserError(f"unknown FLOP mode {mode!r}. Nearest valid modes: {hint}")


def cache_key(component: str, mode: str, shape: Mapping[str, int], lora: LoraSpec | None, tiny: bool) -> str:
    shape_key = ",".join(f"{k}={v}" for k, v in sorted(shape.items()))
    lora_key = lora.key() if (mode == "backward_lora" and lora is not None) else "-"
    return f"{component}|{shape_key}|{mode}|lora={lora_key}|{'tiny' if tiny else 'full'}"


def count(
    component: str,
    mode: str = "forward",
    *,
    shape: Mapping[str, int] | None = None,
    lora: LoraSpec | None = None,
    tiny: bool = False,
    cache: FlopCache | None | Literal["default"] = "default",
) -> FlopCount:
    """FLOPs per sample of ``component`` in ``mode`` (see the module docstring), cached.

    ``shape`` overrides the architecture's default input shape (e.g. ``{"text_tokens": 600}``).
    """
    _check_mode(mode)
    a = arch.get(component)
    resolved = a.shape(shape, tiny=tiny)
    if mode == "backward_lora":
        lora = lora or LoraSpec(targets=a.lora_targets or arch.UNET_LORA_TARGETS)
        if not a.lora_targets:
            raise UserError(f"{component} takes no LoRA adapters here; use mode backward_frozen or backward_full")
    if mode == "backward_frozen" and a.grad_input is None:
        raise UserError(f"{component} has no differentiable input; use mode forward or backward_full")
    store = default_cache() if cache == "default" else cache
    key = cache_key(component, mode, resolved, lora, tiny)
    if store is not None and (hit := store.get(key)) is not None:
        return hit

    module = arch.build(component, device="meta", tiny=tiny)
    if mode == "backward_lora":
        module = attach_lora(module, lora)  # type: ignore[arg-type]
    elif mode == "backward_full":
        module.requires_grad_(True)
    inputs = a.make_inputs(module, 1, torch.device("meta"), torch.float32, resolved)
    if mode == "backward_frozen":
        inputs[a.grad_input].requires_grad_(True)  # type: ignore[index]
    fwd, bwd = count_callable(lambda: a.run(module, inputs), backward=mode != "forward")
    result = FlopCount(
        component=component,
        mode=mode,
        shape=resolved,
        forward=fwd,
        backward=bwd,
        params=arch.parameter_count(module),
        trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        tiny=tiny,
    )
    if store is not None:
        store.put(key, result)
    return result


def reference_check(component: str, shape: Mapping[str, int] | None = None) -> dict[str, float]:
    """GFLOP per sample: forward, fwd+bwd frozen, fwd+bwd full (the reference table's columns)."""
    a = arch.get(component)
    out = {"forward": count(component, "forward", shape=shape).forward / 1e9}
    if a.grad_input is not None:
        out["fwd+bwd frozen"] = count(component, "backward_frozen", shape=shape).total / 1e9
    out["fwd+bwd full"] = count(component, "backward_full", shape=shape).total / 1e9
    return out
