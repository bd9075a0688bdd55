"""Does a feature space see the reward's ranking? The neighbourhood test behind DrPO's field.

    .venv/bin/python scripts/feature_neighborhoods.py                     # ~1 min on 2 cores
    .venv/bin/python scripts/feature_neighborhoods.py --encoder-weights /tmp/perc.safetensors
    .venv/bin/python scripts/feature_neighborhoods.py --clip-tower --json /tmp/neighbourhoods.json

DrPO moves each candidate along a kernel field built from its nearest positives and negatives
in a feature space. That only helps if, within a prompt, being near a top-ranked candidate says
something about being good. This script samples K=16 candidates for each of ``--prompts`` train
prompts from the shipped shapes generator, ranks them by a reward, takes the top 4 and bottom 4
as anchors (as the quickstart does), and for each of the 8 middle candidates computes

    margin = distance to the nearest bottom anchor - distance to the nearest top anchor

in each feature key. It reports the Spearman correlation between margin and the candidate's own
reward, within each prompt, averaged over prompts. Near 0 means the neighbourhoods carry no
ranking signal and the field is mostly noise; 1 means they order candidates as the reward does.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_bench.generators.base import repeat_conditioning  # noqa: E402
from drpo_bench.registry import FEATURES, GENERATORS, PROMPTS, REWARDS  # noqa: E402

K, N_ANCHOR = 16, 4


def _build(registry: Any, name: str, args: dict[str, Any]) -> Any:
    entry = registry.get(name)
    return entry.cls(entry.parse_config(args))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho along the last axis of (P, M) tensors (average ranks for ties) -> (P,)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        # average rank of ties: mean of the ordinal ranks of equal values
        order = x.argsort(-1).argsort(-1).float()
        same = (x[..., :, None] == x[..., None, :]).float()  # (P, M, M)
        return (same * order[..., None, :]).sum(-1) / same.sum(-1)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    denom = (ra.pow(2).sum(-1) * rb.pow(2).sum(-1)).sqrt()
    return (ra * rb).sum(-1) / denom.clamp_min(1e-12)


def neighbourhood_signal(features: torch.Tensor, scores: torch.Tensor) -> float:
    """features (P, K, D), scores (P, K) -> mean over prompts of rho(margin, score) of the middle candidates."""
    order = scores.argsort(dim=1, descending=True)
    top, bottom, middle = order[:, :N_ANCHOR], order[:, -N_ANCHOR:], order[:, N_ANCHOR:-N_ANCHOR]
    dist = torch.cdist(features, features)  # (P, K, K)
    rows = torch.gather(dist, 1, middle[..., None].expand(-1, -1, K))  # (P, M, K)
    to_top = torch.gather(rows, 2, top[:, None, :].expand(-1, middle.shape[1], -1)).min(-1).values
    to_bottom = torch.gather(rows, 2, bottom[:, None, :].expand(-1, middle.shape[1], -1)).min(-1).values
    own = torch.gather(scores, 1, middle)  # (P, M)
    keep = own.std(dim=1) > 0  # prompts whose middle candidates all tie carry no ranking
    rho = rank_correlation(to_bottom - to_top, own)[keep]
    return float(rho.mean())


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200, help="train prompts, K=16 candidates each")
    parser.add_argument("--encoder-weights", default="", help="shapes-multiscale weights to test ('' = shipped)")
    parser.add_argument("--generator-weights", default="", help="shapes generator weights to sample from ('' = shipped)")
    parser.add_argument("--clip-tower", action="store_true", help="also test the shapes-clip large image tower (scripts/explore)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    gen = _build(GENERATORS, "shapes", {"weights": args.generator_weights})
    rewards = {"checker": _build(REWARDS, "shapes-checker", {}), "clip (small)": _build(REWARDS, "shapes-clip", {"size": "small"})}
    encoder = _build(FEATURES, "shapes-multiscale", {"weights": args.encoder_weights})
    train = [p.text for p in _build(PROMPTS, "shapes", {}).split("train")]
    random.Random(3).shuffle(train)
    prompts = train[: args.prompts]
    with torch.no_grad():
        cond = repeat_conditioning(gen.encode(prompts), K)
        images = gen.decode(gen.sample(gen.noise(len(prompts) * K, torch.Generator().manual_seed(0)), cond))
        spaces = {f"shapes-multiscale {key}": z for key, z in encoder.features(images).items()}
        spaces["raw pixels"] = images
        if args.clip_tower:
            sys.path.insert(0, str(Path(__file__).resolve().parent / "explore"))
            from clip_features import ClipImageFeatures

            spaces["shapes-clip large image tower"] = ClipImageFeatures().features(images)["clip.embed"]
    texts = [p for p in prompts for _ in range(K)]
    table: dict[str, dict[str, float]] = {}
    for rname, reward in rewards.items():
        scores = reward(images, texts).float().view(len(prompts), K)
        for space, z in spaces.items():
            table.setdefault(space, {})[rname] = neighbourhood_signal(z.flatten(1).view(len(prompts), K, -1).float(), scores)

    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"within-prompt rho(nearer a top anchor, own reward), {len(prompts)} prompts x K={K}")
    out.add_column("feature space")
    for rname in rewards:
        out.add_column(rname, justify="right")
    for space, row in table.items():
        out.add_row(space, *(f"{row[r]:+.3f}" for r in rewards))
    Console().print(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"prompts": len(prompts), "k": K, "rho": table}, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
