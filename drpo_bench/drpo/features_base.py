"""The FeatureEncoder seam: the space in which DrPO's drift field is built."""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

import torch


class FeatureEncoder(abc.ABC):
    """Maps generator latents or decoded images to named feature sets.

    ``features(x)`` returns ``{name: (B, L, D)}``: for each of the B samples, L vectors of
    dimension D (locations, patches, pooled statistics). Gradients flow from the features to
    ``x``; the encoder's own weights are frozen.
    """

    registry_name: str = "feature"
    #: what ``features`` consumes: generator latents, or images in [0, 1] (B, 3, H, W)
    input_space: ClassVar[Literal["latents", "images"]] = "latents"
    #: True when ``features(x, cond=...)`` also reads the prompts' conditioning (a UNet teacher)
    uses_conditioning: ClassVar[bool] = False
    #: DrPO computes features with autocast switched off (float32), as the public code does; an
    #: encoder that is a model forward the public code runs under autocast (the frozen-UNet
    #: teacher) sets this True. Its outputs are cast to float32 either way.
    autocast_features: ClassVar[bool] = False
    #: True when ``features(x, keys=...)`` computes only the named sets (DrPO passes its
    #: ``feature_keys``, so sets the loss never reads are not computed)
    selects_keys: ClassVar[bool] = False

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def to(self, device: torch.device | str) -> FeatureEncoder:  # noqa: B027 - optional hook
        return self

    def pooled(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each feature set averaged over its L locations: ``{name: (B, D)}`` in float32 (the
        diversity metric's per-image vectors). An encoder that can average without building every
        location's vector overrides this with the same values (up to float rounding)."""
        return {key: f.float().mean(dim=1) for key, f in self.features(x).items()}
