"""What one optimizer update of each method computes, phase by phase, at paper scale.

A *phase model* is a function ``ComputeSetting -> list[Work]``: the network passes of one
update (which component, in which FLOP mode, forward or backward, for how many samples, in
which ledger phase). :func:`price` turns them into FLOPs with drpo_bench/flops.py (counted on
the meta device, cached) and adds the forward recompute of every gradient-checkpointed
component. Baselines add theirs with::

    @register_phase_model("mymethod", "one line on what it computes")
    def mymethod(s: ComputeSetting) -> list[Work]:
        return [*s.generator_sample(), *s.decode(...), ...]

Matched budget: the *effective batch* (candidates per optimizer update) is the same for every
method; ``K`` candidates are drawn per prompt, so an update sees ``effective_batch / K`` prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from drpo_bench import flops
from drpo_bench.errors import UserError, nearest
from drpo_bench.ledger import PHASES

# ---------------------------------------------------------------------------------------------
# What can be priced: generators, rewards, feature spaces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorStack:
    """A one-step generator's networks and the paper's defaults for it."""

    name: str
    unet: str
    vae: str
    text_encoders: tuple[str, ...]
    default_k: int  # candidates per prompt in the public code
    default_features: str  # DrPO's feature space in the public code


@dataclass(frozen=True)
class RewardSpec:
    name: str
    component: str
    shape: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class FeatureSpec:
    """DrPO's feature space: the encoder and the feature sets it yields per sample.

    ``sets``: (key, L vectors per sample, dimension D); the drift field pools a key's vectors of
    all K candidates into one set of K·L vectors.
    """

    name: str
    component: str | None  # None: no network (raw latents)
    space: str  # "latents" or "images" (images need a differentiable VAE decode)
    sets: tuple[tuple[str, int, int], ...]
    note: str = ""
    tiny_sets: tuple[tuple[str, int, int], ...] = ()  # the same keys on the tiny twin (tests)


GENERATORS: dict[str, GeneratorStack] = {
    "sd-turbo": GeneratorStack("sd-turbo", "sd-turbo-unet", "sd-vae-decoder", ("sd-turbo-text-encoder",), 24, "latent-mae-resnet"),
    "sdxl-turbo": GeneratorStack(
        "sdxl-turbo", "sdxl-turbo-unet", "sdxl-vae-decoder", ("sdxl-text-encoder-1", "sdxl-text-encoder-2"), 16, "vit-mae-base"
    ),
}

REWARDS: dict[str, RewardSpec] = {
    "pickscore": RewardSpec("pickscore", "pickscore", {}, "CLIP-H/14 at 224, 77 text tokens"),
    "hpsv2": RewardSpec("hpsv2", "hpsv2", {}, "open_clip ViT-H-14 at 224, 77 text tokens"),
    "imagereward": RewardSpec("imagereward", "imagereward", {}, "BLIP ViT-L/16 + BERT, 35 text tokens"),
    "hpsv3": RewardSpec("hpsv3", "hpsv3", {"text_tokens": 77}, "Qwen2-VL-7B at 448 px, 77 prompt tokens"),
    "hpsv3-instruct": RewardSpec(
        "hpsv3-instruct", "hpsv3", {"text_tokens": 600}, "Qwen2-VL-7B at 448 px, ≈600-token instruction prompt"
    ),
}

_L4 = 2048  # stage-4 width of the latent ResNet (base width 256 × 8)
FEATURES: dict[str, FeatureSpec] = {
    "latent-mae-resnet": FeatureSpec(
        "latent-mae-resnet",
        "latent-mae-resnet",
        "latents",
        # stage 4 is 8×8 at 512 px: mean/std over all, over 2×2 patches (16), over 4×4 patches (4)
        (("layer4_mean", 1, _L4), ("layer4_std", 1, _L4), ("layer4_mean_2", 16, _L4),
         ("layer4_std_2", 16, _L4), ("layer4_mean_4", 4, _L4), ("layer4_std_4", 4, _L4)),
        "DrPO's SD-Turbo default (widths assumed, see architectures.py)",
        (("layer4_mean", 1, 64), ("layer4_std", 1, 64)),  # tiny: width 8, stage 4 is 1×1
    ),
    "vit-mae-base": FeatureSpec(
        "vit-mae-base",
        "vit-mae-base",
        "images",
        (("layer12_patch_mean", 1, 768), ("layer12_patch_std", 1, 768), ("layer12_cls", 1, 768)),
        "DrPO's SDXL-Turbo default: decoded images resized to 224",
        (("layer2_patch_mean", 1, 32), ("layer2_patch_std", 1, 32), ("layer2_cls", 1, 32)),
    ),
    "raw-latent": FeatureSpec(
        "raw-latent",
        None,
        "latents",
        (("latent", 4096, 4), ("latent_mean", 1, 4), ("latent_std", 1, 4), ("latent_mean_2", 1024, 4),
         ("latent_std_2", 1024, 4), ("latent_mean_4", 256, 4), ("latent_std_4", 256, 4)),
        "the paper's raw-latent ablation (64×64 latents)",
        (("latent", 64, 4), ("latent_mean", 1, 4), ("latent_std", 1, 4)),
    ),
}

#: roles whose backward can be gradient-checkpointed (their forward recomputed in backward)
CHECKPOINT_ROLES = ("generator", "vae", "reward", "features")


def _lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    if name in table:
        return table[name]
    raise UserError(f"unknown {kind} {name!r}. Nearest valid names: {', '.join(nearest(name, table))}")


# ---------------------------------------------------------------------------------------------
# A setting and its units of work
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """Network passes of one update: ``samples`` × (component in ``mode``, ``part``) in ``phase``."""

    phase: str
    role: str  # generator | reference | text | vae | reward | features | loss
    component: str | None  # an architecture name; None for analytic work (``analytic_flops``)
    mode: str  # a flops.MODES key
    part: str  # "forward" | "backward" | "recompute"
    samples: int
    shape: tuple[tuple[str, int], ...] = ()
    analytic_flops: float = 0.0  # per sample, when component is None
    note: str = ""


@dataclass(frozen=True)
class ComputeSetting:
    """One paper setting: generator × reward × feature space at a matched effective batch."""

    generator: GeneratorStack
    reward: RewardSpec
    features: FeatureSpec
    k: int  # candidates per prompt
    effective_batch: int  # candidates per optimizer update (matched across methods)
    n_pos: int = 8  # DrPO positives per prompt (public code: 8)
    n_neg: int = 8  # DrPO negatives per prompt (public code: 8)
    n_tau: int = 3  # drift-field radii (0.02, 0.05, 0.2)
    checkpointing: frozenset[str] = frozenset()  # roles whose forward is recomputed in backward
    lora: flops.LoraSpec = flops.LoraSpec()
    tiny: bool = False  # price the tiny twins instead (tests)

    @property
    def prompts(self) -> int:
        return self.effective_batch // self.k

    # ---- building blocks for phase models --------------------------------------------------
    def text(self, phase: str = "sample") -> list[Work]:
        """Frozen text encoders, once per prompt."""
        return [Work(phase, "text", t, "forward", "forward", self.prompts) for t in self.generator.text_encoders]

    def generator_pass(self, phase: str, *, trainable: bool, part: str = "forward") -> Work:
        """The one-step generator on every candidate: with LoRA grads, or the frozen base."""
        mode = "backward_lora" if trainable else "forward"
        return Work(phase, "generator" if trainable else "reference", self.generator.unet, mode, part, self.effective_batch)

    def vae(self, phase: str, *, grad: bool, part: str = "forward", samples: int | None = None) -> Work:
        mode = "backward_frozen" if grad else "forward"
        n = self.effective_batch if samples is None else samples
        return Work(phase, "vae", self.generator.vae, mode, part, n)

    def reward_pass(self, phase: str, *, grad: bool, part: str = "forward") -> Work:
        mode = "backward_frozen" if grad else "forward"
        shape = () if self.tiny else tuple(sorted(self.reward.shape.items()))  # tiny twins keep their own
        return Work(phase, "reward", self.reward.component, mode, part, self.effective_batch, shape)

    def feature_pass(self, phase: str, *, grad: bool, part: str = "forward") -> Work | None:
        if self.features.component is None:
            return None
        mode = "backward_frozen" if grad else "forward"
        return Work(phase, "features", self.features.component, mode, part, self.effective_batch)

    def drift_loss(self, phase: str = "loss") -> Work:
        """Analytic FLOPs of DrPO's two drift fields, per prompt (matmul-like terms only).

        Per feature set with N = K·L generated vectors, M targets, dimension D: pairwise distances
        2·N·M·D, then per radius the force Σ c·T 2·N·M·D; the field is stop-grad, so its backward
        is elementwise. Preference field: M = (K + n⁺ + n⁻)·L; reference field: M = 3·K·L.
        """
        per_prompt = 0.0
        for _key, length, dim in self.features.tiny_sets if self.tiny else self.features.sets:
            n = self.k * length
            for m in ((self.k + self.n_pos + self.n_neg) * length, 3 * self.k * length):
                per_prompt += (2 + 2 * self.n_tau) * n * m * dim
        return Work(phase, "loss", None, "forward", "forward", self.prompts, analytic_flops=per_prompt,
                    note="analytic, per prompt")


PhaseModel = Callable[[ComputeSetting], list[Work]]


@dataclass(frozen=True)
class PhaseModelEntry:
    name: str
    fn: PhaseModel
    description: str


PHASE_MODELS: dict[str, PhaseModelEntry] = {}


def register_phase_model(name: str, description: str = "") -> Callable[[PhaseModel], PhaseModel]:
    """Register ``fn`` as the phase model of method ``name`` (baselines add theirs this way)."""

    def decorator(fn: PhaseModel) -> PhaseModel:
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        PHASE_MODELS[name] = PhaseModelEntry(name, fn, doc)
        return fn

    return decorator


def get_phase_model(name: str) -> PhaseModelEntry:
    return _lookup(PHASE_MODELS, name, "method (FLOP phase model)")


def _present(*works: Work | None) -> list[Work]:
    return [w for w in works if w is not None]


@register_phase_model("drpo", "K LoRA forwards + K reference + K decodes + K reward forwards + features; no reward grad")
def drpo_phases(s: ComputeSetting) -> list[Work]:
    """DrPO (docs/drpo.md): the reward only ranks; the loss lives in feature space."""
    if s.k < s.n_pos + s.n_neg:
        raise UserError(f"DrPO needs K ≥ n⁺ + n⁻ (got K={s.k}, n⁺={s.n_pos}, n⁻={s.n_neg})")
    images = s.features.space == "images"
    return _present(
        *s.text("sample"),
        s.generator_pass("sample", trainable=True),  # x_k = G_θ(ε_k, c), graph kept
        s.generator_pass("reference", trainable=False),  # x_k^ref, frozen base, no grad
        s.vae("decode", grad=False),  # decode(stopgrad x_k) for the reward
        s.reward_pass("reward_forward", grad=False),  # s_k: forward only
        # pixel features decode x (with grad) and x^ref (no grad) again, as the public code does
        s.vae("features", grad=True) if images else None,
        s.vae("features", grad=False) if images else None,
        s.feature_pass("features", grad=True),  # z = φ(x)
        s.feature_pass("features", grad=False),  # zref = φ(x^ref); z⁺, z⁻ are rows of stopgrad z
        s.drift_loss("loss"),
        s.feature_pass("generator_backward", grad=True, part="backward"),
        s.vae("generator_backward", grad=True, part="backward") if images else None,
        s.generator_pass("generator_backward", trainable=True, part="backward"),
    )


@register_phase_model("draft", "DRaFT-1: backprop the reward through the VAE decode into the one-step output")
def draft_phases(s: ComputeSetting) -> list[Work]:
    """DRaFT (Clark et al., 2024) on a one-step generator: loss = −R(decode(G_θ(ε, c)))."""
    return [
        *s.text("sample"),
        s.generator_pass("sample", trainable=True),
        s.vae("decode", grad=True),  # decode with grad to the latents
        s.reward_pass("reward_forward", grad=True),  # reward forward keeping its graph
        s.reward_pass("reward_backward", grad=True, part="backward"),  # grads to the pixels only
        s.vae("generator_backward", grad=True, part="backward"),
        s.generator_pass("generator_backward", trainable=True, part="backward"),
    ]


# ---------------------------------------------------------------------------------------------
# Pricing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PricedWork:
    work: Work
    flops_per_sample: float

    @property
    def flops(self) -> float:
        return self.flops_per_sample * self.work.samples


@dataclass
class MethodCompute:
    method: str
    lines: list[PricedWork]

    @property
    def phase_flops(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.lines:
            out[line.work.phase] = out.get(line.work.phase, 0.0) + line.flops
        known = [p for p in PHASES if p in out]
        return {p: out[p] for p in known + sorted(set(out) - set(known))}

    @property
    def total(self) -> float:
        return sum(line.flops for line in self.lines)

    @property
    def backward(self) -> float:
        """FLOPs of the backward call(s): reward_backward + generator_backward (recompute included)."""
        return sum(v for k, v in self.phase_flops.items() if k in ("reward_backward", "generator_backward"))


def with_recompute(works: list[Work], checkpointing: frozenset[str]) -> list[Work]:
    """Add the forward recompute of every checkpointed role's backward, in the backward's phase."""
    out: list[Work] = []
    for w in works:
        if w.part == "backward" and w.role in checkpointing:
            out.append(replace(w, part="recompute", note="gradient checkpointing: forward recomputed"))
        out.append(w)
    return out


def price(setting: ComputeSetting, works: list[Work], method: str = "") -> MethodCompute:
    lines = []
    for w in with_recompute(works, setting.checkpointing):
        if w.component is None:
            per = w.analytic_flops
        else:
            lora = setting.lora if w.mode == "backward_lora" else None
            c = flops.count(w.component, w.mode, shape=dict(w.shape), lora=lora, tiny=setting.tiny)
            per = c.backward if w.part == "backward" else c.forward
        lines.append(PricedWork(w, per))
    return MethodCompute(method, lines)


def compute_methods(setting: ComputeSetting, methods: list[str]) -> dict[str, MethodCompute]:
    entries = [get_phase_model(m) for m in methods]  # unknown names fail before any counting
    return {e.name: price(setting, e.fn(setting), e.name) for e in entries}


def make_setting(
    generator: str,
    reward: str,
    *,
    features: str | None = None,
    k: int | None = None,
    effective_batch: int | None = None,
    n_pos: int = 8,
    n_neg: int = 8,
    checkpointing: frozenset[str] | set[str] = frozenset(),
    lora_rank: int = 16,
    tiny: bool = False,
) -> ComputeSetting:
    """Resolve names and defaults (K and features from the generator; effective batch 8·K)."""
    g = _lookup(GENERATORS, generator, "generator")
    r = _lookup(REWARDS, reward, "reward")
    f = _lookup(FEATURES, features or g.default_features, "feature space")
    k = k or g.default_k
    effective_batch = effective_batch or 8 * k
    if k <= 0 or effective_batch <= 0:
        raise UserError(f"K and the effective batch must be positive (got K={k}, effective batch={effective_batch})")
    if effective_batch % k:
        raise UserError(f"the effective batch ({effective_batch}) must be a multiple of K ({k}): whole prompts per update")
    bad = set(checkpointing) - set(CHECKPOINT_ROLES)
    if bad:
        raise UserError(f"cannot checkpoint {sorted(bad)}; valid roles: {', '.join(CHECKPOINT_ROLES)}")
    return ComputeSetting(
        generator=g, reward=r, features=f, k=k, effective_batch=effective_batch, n_pos=n_pos, n_neg=n_neg,
        checkpointing=frozenset(checkpointing), lora=flops.LoraSpec(rank=lora_rank), tiny=tiny,
    )
