"""FID and KID of a cell's eval images against a reference image set, through torch-fidelity.

The reference is either the shapes world's rendered ground truth for the same eval prompts
(``reference: shapes-ground-truth``) or a folder of images the user points to (real suites:
e.g. COCO-30k or the eval prompts' images from a stronger model). The feature extractor is any
that torch-fidelity registers (``inception-v3-compat`` for the usual FID, ``clip-vit-b-32``,
``dinov2-vit-l-14`` ...) or ``drpo-shapes-encoder``, registered here: the shipped shapes encoder,
whose stage means are the image statistics of that world (torch-fidelity's Inception weights are
a download, and Inception features of 32-px synthetic shapes say little).

Both numbers go through torch-fidelity's own ``calculate_metrics`` (Fréchet distance of Gaussian
fits; KID = unbiased polynomial-kernel MMD² averaged over ``kid_subsets`` random subsets).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from drpo_bench.errors import UserError
from drpo_bench.metrics.base import EvalSamples, Metric, MetricValue
from drpo_bench.registry import METRICS, StrictConfig

SHAPES_EXTRACTOR = "drpo-shapes-encoder"
SHAPES_GROUND_TRUTH = "shapes-ground-truth"


class _Uint8Images(torch.utils.data.Dataset):
    """(N, 3, H, W) float images in [0, 1] -> uint8 tensors, the input torch-fidelity expects."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = (images.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 3, H, W)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class _RenderedReference(torch.utils.data.Dataset):
    """The shapes world's ground truth of ``texts`` (layouts from ``seed``), rendered on first access."""

    def __init__(self, texts: list[str], seed: int) -> None:
        self.texts, self.seed = texts, seed
        self._images: _Uint8Images | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._images is None:
            from drpo_bench.shapes.render import render_batch

            self._images = _Uint8Images(render_batch(self.texts, self.seed))
        return self._images[i]


def register_shapes_extractor() -> None:
    """Register ``drpo-shapes-encoder`` with torch-fidelity (once per process)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if SHAPES_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return

    class ShapesEncoderExtractor(FeatureExtractorBase):
        """uint8 (B, 3, 32, 32) -> ``pool``: the shipped shapes encoder's three stage maps, each
        averaged over locations and joined (B, 24 + 48 + 96 = 168)."""

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            super().__init__(name, features_list)
            from drpo_bench.drpo.features_shapes import SHIPPED_ENCODER
            from drpo_bench.shapes.encoder_model import load_encoder

            self.net = load_encoder(SHIPPED_ENCODER).requires_grad_(False).eval()

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("pool",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "pool"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if x.shape[-2:] != (32, 32):
                raise ValueError(f"{SHAPES_EXTRACTOR} reads 32x32 shapes images, got {tuple(x.shape[-2:])}")
            maps = self.net(x.float() / 255.0)  # [(B, 24, 16, 16), (B, 48, 8, 8), (B, 96, 4, 4)]
            return (torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1).double(),)  # (B, 168)

    register_feature_extractor(SHAPES_EXTRACTOR, ShapesEncoderExtractor)


@METRICS.register("fid")
class FrechetDistance(Metric):
    """FID and KID x ``kid_scale`` (both lower is better) against a reference image set."""

    higher_is_better = False
    definition: ClassVar[dict[str, Any]] = {
        "model": "a torch-fidelity feature extractor (default drpo-shapes-encoder)",
        "version": "torch-fidelity",
        "formula": "FID: Fréchet distance between Gaussian fits of eval-image and reference features; "
                   "KID: unbiased polynomial-kernel MMD² averaged over random subsets",
        "scale": 1.0,
    }

    class Config(StrictConfig):
        # "shapes-ground-truth" = rendered ground truth of the same eval prompts; else a folder of images
        reference: str = SHAPES_GROUND_TRUTH
        reference_seed: int = 0  # layouts of the rendered ground truth (shapes only)
        reference_per_prompt: int | None = Field(None, ge=1)  # rendered images per prompt; None = as many as eval
        feature_extractor: str = SHAPES_EXTRACTOR  # a torch-fidelity extractor name; inception-v3-compat for real images
        feature_layer: str | None = None  # None = the extractor's default layer for each metric
        feature_extractor_weights_path: str | None = None  # local weights for offline machines (torch-fidelity's kwarg)
        kid_subsets: int = Field(100, ge=1)  # torch-fidelity's default
        kid_subset_size: int = Field(1000, ge=2)  # capped at the smaller set's size
        kid_scale: float = Field(1000.0, gt=0)  # papers print Inception KID x 10^3; other feature spaces differ

        @field_validator("feature_extractor")
        @classmethod
        def _known_extractor(cls, name: str) -> str:
            from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

            known = sorted({SHAPES_EXTRACTOR, *FEATURE_EXTRACTORS_REGISTRY})
            if name not in known:
                raise ValueError(f"unknown feature extractor {name!r}; torch-fidelity knows {', '.join(known)}")
            return name

    def definitions(self) -> dict[str, dict[str, Any]]:
        c = self.config
        reference = ("rendered ground truth of the eval prompts (seed "
                     f"{c.reference_seed})" if c.reference == SHAPES_GROUND_TRUTH else f"images in {c.reference}")
        common = {"model": f"torch-fidelity feature extractor {c.feature_extractor}"
                           + (f" layer {c.feature_layer}" if c.feature_layer else ""),
                  "version": f"torch-fidelity {_fidelity_version()}", "reference": reference}
        return {
            "fid": {**common, "formula": "Fréchet distance between Gaussian fits of eval-image and reference features",
                    "scale": 1.0},
            "kid": {**common, "formula": f"unbiased polynomial-kernel MMD² (KID), mean over {c.kid_subsets} subsets of "
                                         f"at most {c.kid_subset_size}", "scale": c.kid_scale},
        }

    def compute(self, samples: EvalSamples) -> dict[str, MetricValue]:
        c = self.config
        if c.feature_extractor == SHAPES_EXTRACTOR:
            register_shapes_extractor()
        reference, n_reference = self._reference(samples)
        reference_key = None
        if c.reference == SHAPES_GROUND_TRUTH:  # a function of the prompts and reference_seed: its features
            # are extracted once per process and reused by every evaluation of the same prompts
            reference_key = (c.feature_extractor, c.feature_layer, c.feature_extractor_weights_path, c.reference_seed,
                             tuple(reference))
            reference = _RenderedReference(list(reference), c.reference_seed)
        n = min(samples.images.shape[0], n_reference)
        if n < 2:
            raise ValueError(f"fid: need at least 2 eval and 2 reference images, have {samples.images.shape[0]} and "
                             f"{n_reference}")
        kwargs: dict[str, Any] = {
            "input1": _Uint8Images(samples.images), "input2": reference, "fid": True, "kid": True,
            "feature_extractor": c.feature_extractor, "kid_subsets": c.kid_subsets,
            "kid_subset_size": min(c.kid_subset_size, n), "cuda": torch.cuda.is_available(), "cache": False,
            "verbose": False, "save_cpu_ram": True, "samples_shuffle": False,
        }
        if c.feature_layer:
            kwargs["feature_layer_fid"] = kwargs["feature_layer_kid"] = c.feature_layer
        if c.feature_extractor_weights_path:
            kwargs["feature_extractor_weights_path"] = c.feature_extractor_weights_path
        if not isinstance(reference, torch.utils.data.Dataset):  # a folder: resize to the eval images' size
            kwargs.update(samples_resize_and_crop=int(samples.images.shape[-1]), samples_find_deep=True)
        # the eval images' features, one row per image: the head of a final evaluation reads its rows
        features_key = ("fid-features", c.feature_extractor, c.feature_layer, c.feature_extractor_weights_path)
        try:
            out = _fid_and_kid(kwargs, reference_key, lambda extract: samples.per_row(features_key, extract))
        except (ValueError, RuntimeError, OSError) as exc:  # e.g. Inception weights not downloadable offline
            raise UserError(f"fid: torch-fidelity could not compute FID/KID with {c.feature_extractor}: {exc}. "
                            "Offline, point feature_extractor_weights_path at a local copy of its weights.") from exc
        definitions = self.definitions()
        return {
            "fid": MetricValue(mean=float(out["frechet_inception_distance"]), higher_is_better=False,
                               definition=definitions["fid"]),
            "kid": MetricValue(mean=float(out["kernel_inception_distance_mean"]) * c.kid_scale, higher_is_better=False,
                               definition=definitions["kid"]),
        }

    def _reference(self, samples: EvalSamples) -> tuple[Any, int]:
        c = self.config
        if c.reference == SHAPES_GROUND_TRUTH:
            if samples.images.shape[-1] != 32:
                raise UserError("fid: reference 'shapes-ground-truth' is for the shapes world; point `reference` at a "
                                "folder of reference images for other generators")
            per_prompt = c.reference_per_prompt
            texts = list(samples.prompts) if per_prompt is None else [
                t for t in dict.fromkeys(samples.prompts) for _ in range(per_prompt)]
            return texts, len(texts)  # rendered only when their features are not cached
        folder = Path(c.reference).expanduser()
        files = [p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}] if folder.is_dir() else []
        if not files:
            raise UserError(f"fid: reference {c.reference!r} is neither '{SHAPES_GROUND_TRUTH}' nor a folder of "
                            ".png/.jpg images; point it at the reference image folder")
        return str(folder), len(files)


#: ground-truth reference features by (extractor, layer, weights, seed, reference texts); ~2 MiB each
_REFERENCE_FEATURES: dict[Any, dict[str, torch.Tensor]] = {}
_REFERENCE_CACHE_SIZE = 8


def _fid_and_kid(kwargs: dict[str, Any], reference_key: Any,
                 input1_features: Callable[[Callable[[], dict[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = None,
                 ) -> dict[str, float]:
    """torch-fidelity's own feature extraction and FID (``calculate_metrics``' steps, in its order),
    with KID by ``kid_from_features``: the same subsets and estimator as torch-fidelity's KID, without
    recomputing a kernel matrix per subset. ``reference_key``: cache input2's features under it.
    ``input1_features(extract)``: input1's features, given the function that extracts them (the
    evaluation's per-row memo: a final evaluation's head reads its rows instead of extracting again)."""
    from torch_fidelity.helpers import get_kwarg
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import (
        create_feature_extractor,
        extract_featuresdict_from_input_id_cached,
        resolve_feature_extractor,
        resolve_feature_layer_for_metric,
    )

    layer_fid = resolve_feature_layer_for_metric("fid", **kwargs)
    layer_kid = resolve_feature_layer_for_metric("kid", **kwargs)
    extractor = create_feature_extractor(resolve_feature_extractor(**kwargs), list({layer_fid, layer_kid}), **kwargs)
    def extract_1() -> dict[str, torch.Tensor]:
        return extract_featuresdict_from_input_id_cached(1, extractor, **kwargs)  # {layer: (N, D)}

    features_1 = extract_1() if input1_features is None else input1_features(extract_1)
    features_2 = _REFERENCE_FEATURES.get(reference_key) if reference_key is not None else None
    if features_2 is None:
        features_2 = extract_featuresdict_from_input_id_cached(2, extractor, **kwargs)
        if reference_key is not None:
            if len(_REFERENCE_FEATURES) >= _REFERENCE_CACHE_SIZE:
                _REFERENCE_FEATURES.pop(next(iter(_REFERENCE_FEATURES)))
            _REFERENCE_FEATURES[reference_key] = features_2
    out = fid_statistics_to_metric(fid_featuresdict_to_statistics(features_1, layer_fid),
                                   fid_featuresdict_to_statistics(features_2, layer_fid), False)
    kid = kid_from_features(features_1[layer_kid], features_2[layer_kid], subsets=get_kwarg("kid_subsets", kwargs),
                            subset_size=get_kwarg("kid_subset_size", kwargs), rng_seed=get_kwarg("rng_seed", kwargs),
                            degree=get_kwarg("kid_kernel_poly_degree", kwargs),
                            gamma=get_kwarg("kid_kernel_poly_gamma", kwargs), coef0=get_kwarg("kid_kernel_poly_coef0", kwargs))
    return {**out, "kernel_inception_distance_mean": kid}


def kid_from_features(features_1: torch.Tensor, features_2: torch.Tensor, *, subsets: int, subset_size: int,
                      rng_seed: int, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """torch-fidelity's KID (``metric_kid.kid_features_to_metric``, polynomial kernel, unbiased MMD²)
    from the same random subsets (``RandomState(rng_seed)``, one draw per input per subset, without
    replacement), computed from the three whole kernel matrices: a subset's kernel sums are
    w_aᵀ K w_b for 0/1 subset indicators w. torch-fidelity builds three m×m kernels per subset
    (300 for the default 100 subsets, 85% of an evaluation here); this builds three once. Equal to
    torch-fidelity's value up to float64 summation order (tests/test_fid_metric.py)."""
    import numpy as np

    x, y = features_1.cpu().numpy(), features_2.cpu().numpy()  # (N1, D), (N2, D) float64
    n1, n2, m = x.shape[0], y.shape[0], subset_size
    if n1 < m or n2 < m:
        raise ValueError(f"KID subset size {m} exceeds the number of samples ({n1}, {n2})")
    g = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.matmul(a, b.T) * g + coef0) ** degree

    rng = np.random.RandomState(rng_seed)
    w1, w2 = np.zeros((n1, subsets)), np.zeros((n2, subsets))  # subset indicators, one column per subset
    for i in range(subsets):  # the draws torch-fidelity makes, in its order
        w1[rng.choice(n1, m, replace=False), i] = 1.0
        w2[rng.choice(n2, m, replace=False), i] = 1.0
    k11, k22 = kernel(x, x), kernel(y, y)
    xx = np.einsum("is,is->s", w1, k11 @ w1) - w1.T @ np.diagonal(k11)  # off-diagonal sums per subset
    yy = np.einsum("is,is->s", w2, k22 @ w2) - w2.T @ np.diagonal(k22)
    xy = np.einsum("is,is->s", w1, kernel(x, y) @ w2)
    mmd2 = (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)
    return float(np.mean(mmd2))


def _fidelity_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-fidelity")
    except Exception:  # noqa: BLE001 - a version string is informative only
        return "unknown"
