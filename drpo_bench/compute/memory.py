"""Memory of one training micro-batch, predicted on the meta device from the ``Method.step`` that trains.

``drpo-bench flops`` runs each method's real step on full-size networks built on the meta device
(drpo_bench/compute/bench.py). The same run, with the tools here switched on, also gives the memory
the step would take on a device, without any weights:

- :class:`LiveTensors` (a ``TorchDispatchMode``): every storage an op creates is counted at its
  size, and uncounted when its last reference dies (a weakref finalizer on the storage). Meta
  tensors have sizes and lifetimes, just no data, so the live total and its peak are what an
  allocator would hold. The stack's parameters, buffers, LoRA gradients and optimizer state are
  registered before the step.
- :class:`SavedTensors` (``torch.autograd.graph.saved_tensors_hooks``): the bytes autograd saves
  for the backward, per ledger phase (parameters left out: saving them costs nothing).
- :class:`MemoryLedger`: a ``Ledger`` whose per-phase peak memory is the tracker's peak of live
  bytes while the phase was innermost, instead of the process's RSS.
- :class:`EmulatedAutocast` (a ``TorchFunctionMode``): ``torch.autocast`` has no meta backend,
  so mixed precision is emulated at the torch-function level with CUDA autocast's op lists:
  matmuls, convolutions and attention take fp16/bf16 copies of their inputs (as autocast, above
  autograd, so the copies autograd saves are counted), norms, softmax and losses take fp32.

``torch.distributed._tools.mem_tracker.MemTracker`` would be the library choice, but it
registers a gradient hook on every parameter of every module it sees and fails on frozen
weights (``cannot register a hook on a tensor that doesn't require gradient``), which is every
weight of a LoRA run (torch 2.14). ``torch.cuda.max_memory_allocated`` needs a GPU.

Predicted figures are *allocated* bytes, what ``torch.cuda.max_memory_allocated`` reports: the
CUDA context (about 0.5 GiB) and the caching allocator's fragmentation come on top
(``drpo-bench plan`` keeps a headroom for them). Kernel workspaces (cuBLAS, cuDNN convolution
algorithms) are not tensors and are not counted. :func:`measure_memory` runs the same
micro-batch with real tensors and reads the CPU allocator's own running total (the profiler's
allocation events), which does include them: tests/test_memory.py checks one against the other
on the tiny twins, scripts/fullsize_cpu_memory.py at full size.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from drpo_bench.errors import UserError
from drpo_bench.compute.ledger import PHASES, Ledger

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GiB = 2**30

# ---------------------------------------------------------------------------------------------
# Live tensors
# ---------------------------------------------------------------------------------------------


class LiveTensors(TorchDispatchMode):
    """Bytes of the live storages on ``device_type`` that ops created (or that were registered), and their peak.

    A storage is counted once (views share it) at ``nbytes()``, from the op that created it until
    its last reference dies. ``reset_peak()`` starts a new interval (the ledger calls it at phase
    boundaries); ``peak`` is the maximum since, ``overall_peak`` since the start.
    """

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self.overall_peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensors: Iterable[torch.Tensor]) -> int:
        """Count these tensors' storages (if not yet counted); returns the bytes newly counted."""
        added = 0
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type != self.device_type or t.layout != torch.strided:
                continue
            st = t.untyped_storage()
            if st in self._seen:
                continue
            n = st.nbytes()
            self._seen[st] = n
            weakref.finalize(st, self._free, n)
            added += n
        if added:
            self.live += added
            self.peak = max(self.peak, self.live)
            self.overall_peak = max(self.overall_peak, self.live)
        return added

    def _free(self, n: int) -> None:
        self.live -= n

    def reset_peak(self) -> int:
        peak, self.peak = self.peak, self.live
        return peak

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.track(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


class SavedTensors:
    """Bytes autograd saves for the backward, per ledger phase (each storage once per phase; parameters
    and other registered persistent storages are left out, they are held anyway)."""

    def __init__(self, ledger: Ledger, persistent: WeakIdKeyDictionary) -> None:
        self.ledger = ledger
        self.persistent = persistent
        self.by_phase: dict[str, int] = {}
        self._seen: dict[str, set[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            st = t.untyped_storage()
            if st not in self.persistent:
                phase = self.ledger._stack[-1] if self.ledger._stack else "other"
                seen = self._seen.setdefault(phase, set())
                if id(st) not in seen:
                    seen.add(id(st))
                    self.by_phase[phase] = self.by_phase.get(phase, 0) + st.nbytes()
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class MemoryLedger(Ledger):
    """A ledger whose phase memory is the tracker's peak of live bytes while the phase was innermost."""

    def __init__(self, tracker: LiveTensors) -> None:
        super().__init__("cpu")
        self.tracker = tracker

    def _peak_memory(self) -> int:
        return self.tracker.overall_peak

    def _interval_peak_memory(self) -> int:
        return self.tracker.reset_peak()


# ---------------------------------------------------------------------------------------------
# Mixed precision on the meta device
# ---------------------------------------------------------------------------------------------

#: autocast's op lists per device (torch's aten/src/ATen/autocast_mode.cpp), as torch-function names;
#: the float32 lists keep the ops whose outputs matter for memory (norms, softmax, losses, exp/log)
_MATMULS = frozenset({
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "prelu",
    "scaled_dot_product_attention",
})
_LOSSES = frozenset({
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "nll_loss", "kl_div", "binary_cross_entropy_with_logits",
    "cosine_embedding_loss", "margin_ranking_loss", "cdist",
})
AUTOCAST_OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "cuda": (_MATMULS | {"addmv", "mv", "einsum", "chain_matmul"},
             _LOSSES | {"layer_norm", "group_norm", "softmax", "log_softmax", "exp", "log", "pow", "rsqrt",
                        "reciprocal", "cosine_similarity", "norm", "logsumexp", "cumsum", "softplus"}),
    "cpu": (_MATMULS, _LOSSES),  # CPU autocast keeps norms and softmax in the lower precision
}


class EmulatedAutocast(TorchFunctionMode):
    """``torch.autocast(dtype=...)`` for meta tensors: casts the inputs of autocast's op lists.

    The casts run above autograd, as autocast's do, so what autograd saves (e.g. the fp16 copy of
    an fp32 frozen weight a matmul needs for its input gradient) is what a GPU run saves. On or off
    is the CPU autocast state: ``torch.autocast("meta", enabled=False)`` blocks inside the step
    switch CPU autocast off (see :func:`emulated_autocast`), and gradient checkpointing saves and
    restores that state for its recompute, as it does a GPU's (meta tensors are no CPU tensors:
    CPU autocast itself leaves them alone).
    """

    def __init__(self, dtype: torch.dtype, device_type: str = "cuda") -> None:
        super().__init__()
        self.dtype = dtype
        self.low_ops, self.fp32_ops = AUTOCAST_OPS[device_type]

    def _cast(self, value: Any, source: tuple[torch.dtype, ...], target: torch.dtype) -> Any:
        if isinstance(value, torch.Tensor) and value.dtype in source and value.device.type == "meta":
            return value.to(target)
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v, source, target) for v in value)
        return value

    def _backward(self, func: Any, args: Any, kwargs: dict[str, Any]) -> None:
        """``Tensor.backward`` / ``torch.autograd.backward`` with this mode on the stack: a checkpointed
        block's recompute runs in the backward and must cast as its forward did (calling ``func`` from
        here would run it with the mode popped, as every function a mode intercepts)."""
        from torch.autograd import _make_grads, _tensor_or_tensors_to_tuple
        from torch.autograd.graph import _engine_run_backward

        if func is torch.Tensor.backward:
            names = ("gradient", "retain_graph", "create_graph", "inputs")
            tensor, rest = args[0], dict(zip(names, args[1:])) | kwargs
            tensors, grads = (tensor,), rest.get("gradient")
        else:
            names = ("grad_tensors", "retain_graph", "create_graph", "grad_variables", "inputs")
            tensors, rest = args[0], dict(zip(names, args[1:])) | kwargs
            tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
            grads = rest.get("grad_tensors")
        inputs = rest.get("inputs")
        inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
        create_graph = bool(rest.get("create_graph") or False)
        retain_graph = rest.get("retain_graph")
        grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grads, len(tensors)), is_grads_batched=False)
        with self:
            _engine_run_backward(tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph,
                                 inputs, allow_unreachable=True, accumulate_grad=True)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            return self._backward(func, args, kwargs)
        if torch.is_autocast_enabled("cpu"):
            name = getattr(func, "__name__", "")
            if name in self.low_ops:
                args = self._cast(args, (torch.float32,), self.dtype)
                kwargs = {k: self._cast(v, (torch.float32,), self.dtype) for k, v in kwargs.items()}
            elif name in self.fp32_ops:
                args = self._cast(args, (torch.float16, torch.bfloat16), torch.float32)
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulated_autocast(precision: str, device_type: str = "cuda") -> Iterator[EmulatedAutocast | None]:
    """The training loop's ``autocast(precision)`` on the meta device, as ``device_type``'s autocast casts
    (fp32: nothing). ``torch.autocast("meta", ...)`` becomes ``torch.autocast("cpu", ...)``: its state is
    the emulation's on/off switch."""
    if precision == "fp32":
        yield None
        return
    mode = EmulatedAutocast(DTYPES[precision], device_type)
    original = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return original("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment]
    try:
        with original("cpu", dtype=DTYPES[precision]), mode:
            yield mode
    finally:
        torch.autocast = original  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# One micro-batch
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """The dtypes of a run: frozen generator weights, the loop's autocast, the reward's weights."""

    weights: str = "fp32"  # the generator's ``dtype`` (LoRA stays fp32)
    autocast: str = "fp32"  # train.precision: fp32 (none), fp16 or bf16 autocast
    reward: str | None = None  # the reward network's weights; None: as ``weights``

    def label(self) -> str:
        reward = f", reward {self.reward}" if self.reward and self.reward != self.weights else ""
        return f"weights {self.weights}{reward}, autocast {self.autocast}"


@dataclass
class MemoryEstimate:
    """Memory of one micro-batch of ``method`` (bytes): what stays, and the peak while the step runs."""

    method: str
    micro_prompts: int
    candidates: int  # micro_prompts × K
    precision: str
    checkpointing: list[str]
    weights_bytes: int  # frozen parameters and buffers of every network
    trainable_bytes: int  # LoRA parameters
    grad_bytes: int  # LoRA gradients (held across micro-batches)
    optimizer_bytes: int  # AdamW's two moments (and step count) per LoRA parameter
    peak_bytes: int  # peak of live bytes during the step, everything above included
    phase_peak_bytes: dict[str, int] = field(default_factory=dict)  # peak while the phase was innermost
    phase_saved_bytes: dict[str, int] = field(default_factory=dict)  # bytes autograd saved in the phase
    device: str = "meta"

    @property
    def persistent_bytes(self) -> int:
        return self.weights_bytes + self.trainable_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def activation_peak_bytes(self) -> int:
        """The peak above what stays: activations, saved tensors, temporaries."""
        return self.peak_bytes - self.persistent_bytes

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"persistent_bytes": self.persistent_bytes,
                               "activation_peak_bytes": self.activation_peak_bytes}


def stack_modules(*objects: Any) -> list[nn.Module]:
    """Every ``nn.Module`` held by these objects (one level of attributes, and the objects themselves)."""
    found: dict[int, nn.Module] = {}
    for obj in objects:
        if obj is None:
            continue
        values = [obj] if isinstance(obj, nn.Module) else list(vars(obj).values())
        for value in values:
            if isinstance(value, nn.Module):
                found[id(value)] = value
            elif isinstance(value, (list, tuple)):
                found.update({id(v): v for v in value if isinstance(v, nn.Module)})
    return list(found.values())


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


#: the last meta stacks built (networks on the meta device hold no memory; building one takes seconds)
_META_STACKS: dict[tuple[Any, ...], Any] = {}


def _prepared(method: str, setting: Any, device: str, precision: Precision, generator_args: dict[str, Any] | None,
              ledger: Ledger) -> tuple[Any, Any]:
    """Build the stack (meta stacks are reused across methods and micro-batches, as ``count_methods`` shares
    one) and run the method's ``setup`` on it."""
    from drpo_bench.compute import bench

    def build() -> Any:
        return bench.build_stack(setting, device, DTYPES[precision.weights],
                                 reward_dtype=DTYPES[precision.reward or precision.weights],
                                 generator_args=generator_args)

    if device == "meta":
        key = (setting.generator, setting.reward, setting.checkpointing, setting.lora_rank, setting.tiny, precision,
               repr(sorted((generator_args or {}).items())))
        if key not in _META_STACKS:
            _META_STACKS.clear()  # one at a time: a plan walks its rows setting by setting
            _META_STACKS[key] = build()
        stack = _META_STACKS[key]
    else:
        stack = build()
    prepared = bench.prepare(method, setting, stack, ledger)
    return stack, prepared


def _persistent(stack: Any, prepared: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(frozen parameters and buffers, trainable parameters) of every network of the stack and the method."""
    method = prepared.method
    owners = [stack.generator, stack.reward, method, *(v for v in vars(method).values() if hasattr(v, "__dict__"))]
    frozen: list[torch.Tensor] = []
    for module in stack_modules(*owners):
        frozen += [p for p in module.parameters() if not p.requires_grad] + list(module.buffers())
    trainable = list(stack.generator.trainable_parameters())
    return frozen, trainable


def _micro_prompts(setting: Any, micro: int) -> list[str]:
    from drpo_bench.compute import bench

    if micro <= 0:
        raise UserError(f"micro-batch must be at least 1 prompt (got {micro})")
    return bench._prompts(micro)


def predict_memory(method: str, setting: Any, *, micro: int = 1, precision: Precision | None = None,
                   generator_args: dict[str, Any] | None = None, autocast_like: str = "cuda") -> MemoryEstimate:
    """Memory of one micro-batch of ``micro`` prompts (``micro`` × K candidates) of a registered method's
    real step, on full-size (or tiny) networks on the meta device. The LoRA gradients and AdamW state
    exist before the step (a micro-batch after the first), as they do for every micro-batch but the
    first update's first. ``autocast_like``: whose autocast op lists mixed precision follows (a GPU run:
    "cuda"; "cpu" to compare with a CPU run)."""
    from drpo_bench.compute import bench

    precision = precision or Precision()
    tracker = LiveTensors("meta")
    ledger = MemoryLedger(tracker)
    stack, prepared = _prepared(method, setting, "meta", precision, generator_args, ledger)
    frozen, trainable = _persistent(stack, prepared)
    grads = [torch.zeros_like(p) for p in trainable]
    for p, g in zip(trainable, grads):
        p.grad = g
    optimizer_state = [t for p in trainable for t in (  # AdamW: exp_avg, exp_avg_sq and a float32 step count
        torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), device=p.device))]
    tracker.track(frozen)
    tracker.track(trainable)
    tracker.track(grads)
    tracker.track(optimizer_state)
    persistent: WeakIdKeyDictionary = WeakIdKeyDictionary(
        {t.untyped_storage(): True for t in (*frozen, *trainable, *grads, *optimizer_state)})
    ctx = prepared.ctx
    ctx.loss_scale = micro / setting.prompts if setting.prompts >= micro else 1.0
    ctx.noise_rng.manual_seed(0)
    saved = SavedTensors(ledger, persistent)
    tracker.reset_peak()
    tracker.overall_peak = tracker.live
    with bench.meta_step(), emulated_autocast(precision.autocast, autocast_like), tracker, saved:
        ledger.begin_update()
        try:
            prepared.method.step(_micro_prompts(setting, micro), ctx)
        finally:
            record = ledger.end_update()
    estimate = MemoryEstimate(
        method=method, micro_prompts=micro, candidates=micro * setting.k, precision=precision.label(),
        checkpointing=sorted(setting.checkpointing),
        weights_bytes=_unique_bytes(frozen), trainable_bytes=_unique_bytes(trainable),
        grad_bytes=_unique_bytes(grads), optimizer_bytes=_unique_bytes(optimizer_state),
        peak_bytes=tracker.overall_peak,
        phase_peak_bytes=_ordered({k: v for k, v in record.phase_peak_memory_bytes.items() if record.phase_calls.get(k)}),
        phase_saved_bytes=_ordered(saved.by_phase),
    )
    for p in trainable:
        p.grad = None
    return estimate


def _ordered(values: dict[str, int]) -> dict[str, int]:
    known = [p for p in PHASES if p in values]
    return {k: values[k] for k in known + sorted(set(values) - set(known))}


# ---------------------------------------------------------------------------------------------
# Measured on real tensors
# ---------------------------------------------------------------------------------------------


@dataclass
class MemoryMeasurement:
    """One micro-batch with real tensors: the allocator's peak above the start, the tracker's, the RSS's."""

    method: str
    device: str
    persistent_bytes: int  # parameters, buffers, LoRA grads and AdamW state, counted from the real tensors
    allocator_peak_bytes: int  # the CPU allocator's running total: peak above its value at the start
    tracker_peak_bytes: int  # LiveTensors on the real tensors: peak above the start
    rss_peak_delta_bytes: int | None  # the process's peak RSS rise during the step (None: it was already higher)
    loss_finite: bool
    lora_moved: bool

    @property
    def peak_bytes(self) -> int:
        return self.persistent_bytes + self.allocator_peak_bytes

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"peak_bytes": self.peak_bytes}


def available_bytes() -> int:
    """The kernel's estimate of memory available to a new process (MemAvailable, Linux)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise UserError("no MemAvailable in /proc/meminfo: full-size CPU runs check free memory on Linux only")


def allocator_peak(events: Sequence[Any]) -> int:
    """Peak of the CPU allocator's running total above its start, from the profiler's allocation events."""
    total = peak = 0
    for alloc in sorted(events, key=lambda e: e.start_time_ns):
        total += int(alloc.extra_fields.alloc_size)
        peak = max(peak, total)
    return peak


def _allocation_events(prof: Any, device_type: str) -> list[Any]:
    from torch._C._profiler import _EventType

    out: list[Any] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == device_type:
            out.append(node)
        stack.extend(node.children)
    return out


def measure_memory(method: str, setting: Any, *, micro: int = 1, precision: Precision | None = None,
                   generator_args: dict[str, Any] | None = None, device: str = "cpu", seed: int = 0,
                   lr: float = 1e-4) -> MemoryMeasurement:
    """Run the micro-batch :func:`predict_memory` predicts with real random weights on ``device`` (CPU) and
    measure it under the profiler's memory events, LoRA gradients and AdamW state allocated before (as in
    the prediction); then an AdamW step, to check the LoRA moved."""
    import resource

    from torch.profiler import ProfilerActivity, profile

    from drpo_bench.compute.precision import autocast

    if device != "cpu":
        raise UserError("measure_memory reads the CPU allocator; on a GPU use drpo-bench bench (max_memory_allocated)")
    precision = precision or Precision()
    torch.manual_seed(seed)
    ledger = Ledger("cpu")
    stack, prepared = _prepared(method, setting, device, precision, generator_args, ledger)
    frozen, trainable = _persistent(stack, prepared)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)  # decay would move LoRA without a gradient
    ctx = prepared.ctx
    ctx.loss_scale = micro / setting.prompts if setting.prompts >= micro else 1.0
    prompts = _micro_prompts(setting, micro)
    dev = torch.device(device)

    def one_step() -> Any:
        ctx.noise_rng.manual_seed(seed)
        ledger.begin_update()
        try:
            with autocast(dev, precision.autocast):
                return prepared.method.step(prompts, ctx)
        finally:
            ledger.end_update()

    for p in trainable:  # gradients and AdamW state exist before the measured step, as in the prediction
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients, no weight decay: creates the state, moves nothing
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    persistent = _unique_bytes([*frozen, *trainable, *(p.grad for p in trainable if p.grad is not None), *state])
    tracker = LiveTensors(device)
    tracker.track([*frozen, *trainable, *(p.grad for p in trainable if p.grad is not None), *state])
    tracker.overall_peak = tracker.live = 0  # the step's rise above what stays
    before = [p.detach().clone() for p in trainable]
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with tracker:
            out = one_step()
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = getattr(out, "loss", None)
    loss_finite = loss is not None and math.isfinite(float(loss))
    optimizer.step()
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, trainable))
    return MemoryMeasurement(
        method=method, device=device, persistent_bytes=persistent,
        allocator_peak_bytes=allocator_peak(_allocation_events(prof, device)),
        tracker_peak_bytes=tracker.overall_peak, rss_peak_delta_bytes=(rss_end - rss_start) or None,
        loss_finite=loss_finite, lora_moved=moved,
    )
