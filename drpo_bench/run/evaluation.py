"""Evaluate a generator on held-out prompts: fixed eval noise per seed, every metric, a sample grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drpo_bench.metrics.base import EvalSamples, Metric, MetricValue
from drpo_bench.suite.planning import Cell
from drpo_bench.prompts.base import Prompt
from drpo_bench.store import CellFolder, EvalRecord, MetricRecord, _atomic_write_bytes


@torch.no_grad()
def evaluate(cell: Cell, generator: Any, prompts: list[Prompt], metrics: list[Metric],
             grid_path: Path | None = None, *, max_prompts: int | None = None,
             keep_images: CellFolder | None = None, return_grid: bool = False,
             head_prompts: int | None = None) -> Any:
    """Sample ``images_per_prompt`` images for each held-out prompt and compute every metric.

    Base and methods at seed s share the eval noise (``eval.seed + s``), so per-seed differences
    cancel the draw both share. Returns the record for eval.json and one row per image (prompt
    index, prompt, task, every per-image metric) for scores.jsonl. ``max_prompts`` overrides
    ``eval.max_prompts`` (periodic evaluations); ``keep_images`` writes every image to that folder;
    ``return_grid`` adds a third item: the first ``grid_prompts`` prompts' images (for live logs).
    ``head_prompts`` adds a last item: the record of the first ``head_prompts`` prompts' images alone,
    every metric computed again on them. It is what ``evaluate(max_prompts=head_prompts)`` gives (the
    same noise for those rows: the eval noise is drawn row by row in one stream), without sampling
    them twice: the last periodic evaluation of a run comes from the final one (cell_runner).
    """
    ecfg = cell.eval
    prompts = prompts[: max_prompts or ecfg.max_prompts]
    n = ecfg.images_per_prompt
    rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    noise_rng = torch.Generator().manual_seed(ecfg.seed + cell.seed)
    images, latents = [], []
    for start in range(0, len(rows), ecfg.batch_size):
        batch = rows[start : start + ecfg.batch_size]
        noise = generator.noise(len(batch), noise_rng)
        lat = generator.sample(noise, generator.encode([p.text for _, p in batch]))
        latents.append(lat.float().cpu())
        images.append(generator.decode(lat).float().clamp(0, 1).cpu())
    samples = EvalSamples(
        images=torch.cat(images),  # (N, 3, H, W) in [0, 1]
        latents=torch.cat(latents),
        prompts=[p.text for _, p in rows],
        groups=torch.tensor([i for i, _ in rows]),
        tasks=[p.task for _, p in rows],
    )
    values, definitions = _compute_metrics(metrics, samples)
    if keep_images is not None:
        keep_images.write_eval_images(samples.images, [i for i, _ in rows], n)
    if grid_path is not None and ecfg.grid_prompts:
        write_samples_grid(grid_path, samples.images[: ecfg.grid_prompts * n], nrow=n)
    record = _record(len(prompts), n, ecfg.split, values, definitions)
    per_image = {k: v.per_image for k, v in values.items() if v.per_image is not None}
    scores = [
        {"image": i, "prompt_index": index, "prompt": prompt.text, "task": prompt.task,
         **{k: column[i] for k, column in per_image.items()}}
        for i, (index, prompt) in enumerate(rows)
    ]
    out: tuple[Any, ...] = (record, scores)
    if return_grid:
        out += (samples.images[: ecfg.grid_prompts * n],)
    if head_prompts is not None:
        m = min(head_prompts, len(prompts))
        out += (record if m == len(prompts) else _record(m, n, ecfg.split, *_compute_metrics(metrics, samples.head(m * n))),)
    return out


def _compute_metrics(metrics: list[Metric], samples: EvalSamples
                     ) -> tuple[dict[str, MetricValue], dict[str, dict[str, Any]]]:
    values: dict[str, MetricValue] = {}
    definitions: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        computed = metric.compute(samples)
        values.update(computed)
        for name in computed:
            definitions[name] = metric_definition(metric, name)
    return values, definitions


def _record(n_prompts: int, images_per_prompt: int, split: str, values: dict[str, MetricValue],
            definitions: dict[str, dict[str, Any]]) -> EvalRecord:
    return EvalRecord(
        n_prompts=n_prompts,
        images_per_prompt=images_per_prompt,
        split=split,
        metrics={k: MetricRecord(mean=v.mean, higher_is_better=v.higher_is_better, per_task=v.per_task,
                                 definition=definitions.get(k, {})) for k, v in values.items()},
    )


def metric_definition(metric: Metric, name: str) -> dict[str, Any]:
    """What a metric output measures (model, version, formula, scale), when the metric states it."""
    definitions = getattr(metric, "definitions", None)
    if callable(definitions):
        return dict(definitions().get(name, {}))
    return {}


LABEL_PX = 22  # height of the text band above each row of a labelled grid


def write_samples_grid(path: Path, images: torch.Tensor, nrow: int, labels: list[str] | None = None) -> None:
    """(N, 3, H, W) in [0, 1] -> one PNG, one prompt per row (atomic write); ``labels``: one line of
    text above each row (its prompt), as ``drpo-bench sample`` writes it."""
    from PIL import Image
    from torchvision.utils import make_grid

    if images.shape[-1] < 128:  # upscale tiny images so a person can see them
        factor = max(1, 128 // images.shape[-1])
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=0.5)  # (3, H', W')
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    if labels:
        image = _labelled_rows(image, labels, images.shape[-2] + 2)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _atomic_write_bytes(path, buf.getvalue())


def _labelled_rows(grid: Any, labels: list[str], row_px: int) -> Any:
    """``grid`` (rows of ``row_px`` px after a 2-px top padding) with a white text band above each row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    out = Image.new("RGB", (grid.width, grid.height + LABEL_PX * len(labels)), "white")
    draw = ImageDraw.Draw(out)
    for r, label in enumerate(labels):
        top = r * (row_px + LABEL_PX)
        text = label
        while len(text) > 4 and draw.textlength(text, font=font) > grid.width - 8:
            text = text[:-2]
        draw.text((4, top + 3), text if text == label else text[:-1] + "…", fill="black", font=font)
        last = r == len(labels) - 1
        out.paste(grid.crop((0, r * row_px, grid.width, grid.height if last else (r + 1) * row_px)),
                  (0, top + LABEL_PX))
    return out


#: the fields of an eval_history.jsonl row that are not metric means
HISTORY_FIELDS = ("step", "train_seconds", "n_prompts")


def history_row(step: int, record: EvalRecord, ledger: Any) -> dict[str, Any]:
    """One eval_history.jsonl row: the step, training seconds so far (the ledger's updates) and every mean."""
    seconds = sum(u.seconds for u in getattr(ledger, "updates", []) if getattr(u, "seconds", None) is not None)
    return {"step": step, "train_seconds": seconds, "n_prompts": record.n_prompts,
            **{name: m.mean for name, m in record.metrics.items()}}
