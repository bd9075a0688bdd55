"""The public latent-MAE checkpoint's key layout (``mae_latent_256_torch.pth``), filled with random values.

One builder for every place that needs such parameters without the real file: the tiny twin's
checkpoint (drpo_bench.weights.tiny) and the full-size FLOP/timing builds (architectures, bench). A leaf
module (torch only), so both sides import it without a cycle.

Keys: ``encoder.conv1.kernel`` (kh, kw, in, out: the JAX export's layout), ``encoder.gn1.{scale,bias}``,
``encoder.stages_{s}.layers_{b}.{conv1,conv2,proj_conv}.kernel``, ``...{gn1,gn2,proj_gn}.{scale,bias}``,
``encoder.layer{s+1}_norm.{scale,bias}``; widths double per stage; the first block of stages 2-4
has stride 2 and a projection.
"""

from __future__ import annotations

import torch


def random_mae_latent_params(width: int, layers: tuple[int, ...], in_channels: int = 4, *,
                             generator: torch.Generator | None = None, norm_noise: float = 0.0) -> dict[str, torch.Tensor]:
    """He-initialized kernels; GroupNorm scale 1 and bias 0, plus ``norm_noise`` x N(0, 1) when > 0.
    Tensors are made on the current default device (``meta`` for FLOP counts)."""
    params: dict[str, torch.Tensor] = {}

    def conv(key: str, k: int, cin: int, cout: int) -> None:
        params[f"{key}.kernel"] = torch.randn(k, k, cin, cout, generator=generator) * (2.0 / (k * k * cin)) ** 0.5

    def norm(key: str, c: int) -> None:
        if norm_noise > 0:
            params[f"{key}.scale"] = 1 + norm_noise * torch.randn(c, generator=generator)
            params[f"{key}.bias"] = norm_noise * torch.randn(c, generator=generator)
        else:
            params[f"{key}.scale"], params[f"{key}.bias"] = torch.ones(c), torch.zeros(c)

    conv("encoder.conv1", 3, in_channels, width)
    norm("encoder.gn1", width)
    cin = width
    for s, blocks in enumerate(layers):
        cout = width * 2**s
        for b in range(blocks):
            prefix = f"encoder.stages_{s}.layers_{b}"
            conv(f"{prefix}.conv1", 3, cin, cout)
            norm(f"{prefix}.gn1", cout)
            conv(f"{prefix}.conv2", 3, cout, cout)
            norm(f"{prefix}.gn2", cout)
            if cin != cout or (s > 0 and b == 0):
                conv(f"{prefix}.proj_conv", 1, cin, cout)
                norm(f"{prefix}.proj_gn", cout)
            cin = cout
        norm(f"encoder.layer{s + 1}_norm", cout)
    return params
