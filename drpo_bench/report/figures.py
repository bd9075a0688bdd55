"""The report's figures (matplotlib, Agg): one axis never mixes two metric scales.

- training reward per update, one figure per training reward;
- each held-out metric against training wall-clock seconds and TFLOPs (total = updates x the
  ledger's per-update seconds or FLOPs), per generator: the end point of every method with its
  95% CI over seeds and base at 0, or a curve when the cells carry an eval history;
- each held-out metric against seconds per update, with the Pareto front marked;
- sample grids of the same seed side by side (same prompts and noise in every panel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drpo_bench.report.results import CellResult, Estimate
from drpo_bench.report.table import slugify

RowKey = tuple[str, str, str]
DPI = 120  # enough for print at \linewidth; keeps the embedded HTML small
MAX_GRID_PANELS_PER_LINE = 4  # sample grids per line of the side-by-side figure


@dataclass
class Figure:
    slug: str  # LaTeX label fig:<slug>, HTML id
    path: str  # relative to the results folder
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(key: RowKey, multi: bool) -> str:
    generator, method, reward = key
    return (f"{generator}: " if multi else "") + (f"{method} ({reward})" if reward != "—" else method)


def _colors(rows: dict[RowKey, list[CellResult]]) -> dict[RowKey, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10").colors
    return {k: cycle[i % len(cycle)] for i, k in enumerate(rows)}


def _save(fig: Any, folder: Path, name: str) -> str:
    rel = f"figures/{name}.png"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(folder / rel, dpi=DPI)
    _plt().close(fig)
    return rel


def _half(est: Estimate) -> float:
    return est.half_width or 0.0


def _is_base(cells: list[CellResult]) -> bool:
    return cells[0].info.method_name == "base"


def _metrics(cells: list[CellResult]) -> list[tuple[str, bool]]:
    seen: dict[str, bool] = {}
    for c in cells:
        for name, m in c.metrics.items():
            if m.mean is not None and name not in seen:
                seen[name] = m.higher_is_better
    return list(seen.items())


def _metric_estimate(cells: list[CellResult], metric: str) -> Estimate | None:
    values = [c.metrics[metric].mean for c in cells if metric in c.metrics and c.metrics[metric].mean is not None]
    return Estimate.of(values) if values else None


def _arrow(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"


# ---- training reward -------------------------------------------------------------------------


def training_reward_figures(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool,
                            key: str = "reward_mean") -> list[Figure]:
    """One figure per training reward: its per-update mean over seeds (band: 95% CI over seeds)."""
    plt = _plt()
    colors = _colors(rows)
    by_reward: dict[str, list[RowKey]] = {}
    for row_key, cells in rows.items():
        if any(c.train_log and key in c.train_log[0] for c in cells):
            by_reward.setdefault(row_key[2], []).append(row_key)
    figures = []
    for reward, keys in by_reward.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for row_key in keys:
            logs = [c.train_log for c in rows[row_key] if c.train_log and key in c.train_log[0]]
            length = min(len(log) for log in logs)
            steps = [logs[0][i]["step"] for i in range(length)]
            est = [Estimate.of([log[i][key] for log in logs]) for i in range(length)]
            mean = [e.mean for e in est]
            ax.plot(steps, mean, label=_label(row_key, multi), color=colors[row_key])
            if len(logs) > 1:
                ax.fill_between(steps, [e.mean - _half(e) for e in est], [e.mean + _half(e) for e in est],
                                color=colors[row_key], alpha=0.15, linewidth=0)
        ax.set_xlabel("optimizer update")
        ax.set_ylabel(f"training reward {reward}\n({key}, own scale)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        slug = "train-reward-" + slugify(reward)
        figures.append(Figure(slug, _save(fig, folder, slug),
                              f"Training reward {reward} per optimizer update: mean over seeds, band 95% CI over "
                              f"seeds (each reward on its own axis)."))
    return figures


# ---- alignment against compute ---------------------------------------------------------------


def _totals(cell: CellResult) -> tuple[float | None, float | None]:
    """(training seconds, training TFLOPs) of a cell from its ledger summary."""
    led = cell.ledger
    updates = led.get("updates") or (cell.info.budget or {}).get("steps")
    if not updates:
        return None, None
    seconds = updates * led["seconds_per_update"] if led.get("seconds_per_update") else None
    tflops = updates * led["flops_per_update"] / 1e12 if led.get("flops_per_update") else None
    return seconds, tflops


def _history_curve(cells: list[CellResult], metric: str, per_update: list[float]) -> tuple[list[float], list[Estimate]] | None:
    """x (steps x mean per-update cost) and y (estimate over seeds) at the steps every seed evaluated."""
    histories = [{r["step"]: r[metric] for r in c.eval_history if isinstance(r.get(metric), (int, float))}
                 for c in cells if c.eval_history]
    if not histories or not per_update or len(histories) != len(cells):
        return None
    steps = sorted(set.intersection(*(set(h) for h in histories)))
    if not steps:
        return None
    cost = sum(per_update) / len(per_update)
    return [s * cost for s in steps], [Estimate.of([h[s] for h in histories]) for s in steps]


def _history_prompts(rows: dict[RowKey, list[CellResult]], keys: list[RowKey]) -> str:
    """' (on N held-out prompts)' when the periodic evaluations used fewer prompts than the final one."""
    counts = {r.get("n_prompts") for k in keys for c in rows[k] for r in c.eval_history if r.get("n_prompts")}
    final = {len({r.get("prompt_index") for r in c.scores}) for k in keys for c in rows[k] if c.scores}
    if len(counts) == 1 and final and counts != final:
        return f" (on the first {counts.pop()} held-out prompts; end points: all {max(final)})"
    return ""


def alignment_vs_compute(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool) -> list[Figure]:
    """Per generator and held-out metric: metric vs training seconds (left) and TFLOPs (right)."""
    plt = _plt()
    colors = _colors(rows)
    figures = []
    for generator in dict.fromkeys(k[0] for k in rows):
        keys = [k for k in rows if k[0] == generator]
        trained = [k for k in keys if not _is_base(rows[k]) and any(_totals(c)[0] for c in rows[k])]
        if not trained:
            continue
        base = next((k for k in keys if _is_base(rows[k])), None)
        any_flops = any(_totals(c)[1] for k in trained for c in rows[k])
        uncounted = [_label(k, multi) for k in trained if not all(_totals(c)[1] for c in rows[k])]
        axes_spec = [("seconds", "training wall-clock (s)", 0)] + ([("tflops", "training compute (TFLOPs)", 1)] if any_flops else [])
        for metric, higher in _metrics([c for k in keys for c in rows[k]]):
            fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec), 3.8), squeeze=False, sharey=True)
            drew_curve = False
            for ax, (_, xlabel, which) in zip(axes[0], axes_spec):
                if base is not None and (b := _metric_estimate(rows[base], metric)) is not None:
                    ax.errorbar([0.0], [b.mean], yerr=[[_half(b)], [_half(b)]], fmt="s", color=colors[base],
                                capsize=3, label=_label(base, multi) + " (step 0)")
                    ax.axhline(b.mean, color=colors[base], linestyle=":", linewidth=0.8)
                for k in trained:
                    cells = [c for c in rows[k] if metric in c.metrics and c.metrics[metric].mean is not None]
                    xs = [_totals(c)[which] for c in cells]
                    pairs = [(x, c) for x, c in zip(xs, cells) if x is not None]
                    if not pairs:
                        continue
                    x = Estimate.of([p[0] for p in pairs])
                    y = Estimate.of([p[1].metrics[metric].mean for p in pairs])
                    per_update = [(c.ledger.get("seconds_per_update") if which == 0 else
                                   (c.ledger.get("flops_per_update") or 0) / 1e12) for _, c in pairs]
                    curve = _history_curve([c for _, c in pairs], metric, [p for p in per_update if p])
                    if curve is not None:
                        cx, cy = curve
                        if cx[0] > 0 and base is not None and (b := _metric_estimate(rows[base], metric)) is not None:
                            cx, cy = [0.0] + cx, [b] + cy  # step 0 is the base generator, same eval noise
                        ax.plot(cx, [e.mean for e in cy], color=colors[k], linewidth=1.2)
                        ax.fill_between(cx, [e.mean - _half(e) for e in cy], [e.mean + _half(e) for e in cy],
                                        color=colors[k], alpha=0.15, linewidth=0)
                        drew_curve = True
                    ax.errorbar([x.mean], [y.mean], xerr=[[_half(x)], [_half(x)]], yerr=[[_half(y)], [_half(y)]],
                                fmt="o", color=colors[k], capsize=3, label=_label(k, multi))
                ax.set_xlabel(xlabel)
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # toy runs: tiny TFLOPs
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel(f"{metric} ({_arrow(higher)})")
            axes[0][-1].legend(fontsize=7)
            slug = slugify(f"{metric}-vs-compute" + (f"-{generator}" if multi else ""))
            figures.append(Figure(slug, _save(fig, folder, slug),
                                  f"Held-out {metric} ({_arrow(higher)}) against training cost"
                                  f"{' on ' + generator if multi else ''}: total wall-clock seconds"
                                  f"{' and TFLOPs' if any_flops else ''} (updates x per-update cost from the ledger). "
                                  + (f"Curves: evaluations during training{_history_prompts(rows, keys)}, band 95% CI "
                                     "over seeds; " if drew_curve else "")
                                  + "points: end of training, mean with 95% CI over seeds (both axes); base at 0."
                                  + (f" FLOPs not counted for {', '.join(uncounted)}: absent from the TFLOPs panel."
                                     if any_flops and uncounted else "")))
    return figures


def pareto_front(points: list[tuple[float, float]], higher: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and metric (``higher``)."""
    def better_or_equal(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and (a[1] >= b[1] if higher else a[1] <= b[1])

    front = []
    for i, p in enumerate(points):
        dominated = any(better_or_equal(q, p) and q != p for j, q in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_figures(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool) -> list[Figure]:
    """Per generator and held-out metric: metric vs seconds per update, Pareto front marked."""
    plt = _plt()
    colors = _colors(rows)
    figures = []
    for generator in dict.fromkeys(k[0] for k in rows):
        keys = [k for k in rows if k[0] == generator]
        trained = [k for k in keys if not _is_base(rows[k]) and all(c.ledger.get("seconds_per_update") for c in rows[k])]
        if len(trained) < 1:
            continue
        base = next((k for k in keys if _is_base(rows[k])), None)
        for metric, higher in _metrics([c for k in keys for c in rows[k]]):
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            points, labels = [], []
            for k in trained:
                y = _metric_estimate(rows[k], metric)
                if y is None:
                    continue
                x = Estimate.of([c.ledger["seconds_per_update"] for c in rows[k]])
                ax.errorbar([x.mean], [y.mean], xerr=[[_half(x)], [_half(x)]], yerr=[[_half(y)], [_half(y)]],
                            fmt="o", color=colors[k], capsize=3, label=_label(k, multi))
                points.append((x.mean, y.mean))
                labels.append(k)
            if not points:
                plt.close(fig)
                continue
            front = pareto_front(points, higher)
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="k", linewidth=1,
                    linestyle="--", drawstyle="steps-post", zorder=0)
            ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=160, facecolors="none",
                       edgecolors="k", linewidths=1.2, label="Pareto front", zorder=3)
            if base is not None and (b := _metric_estimate(rows[base], metric)) is not None:
                ax.axhline(b.mean, color=colors[base], linestyle=":", linewidth=1, label=_label(base, multi))
            xs = [p[0] for p in points]
            if min(xs) > 0 and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
            ax.set_xlabel("seconds per optimizer update (lower is cheaper)")
            ax.set_ylabel(f"{metric} ({_arrow(higher)})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            slug = slugify(f"pareto-{metric}" + (f"-{generator}" if multi else ""))
            front_names = ", ".join(_label(labels[i], multi) for i in front)
            figures.append(Figure(slug, _save(fig, folder, slug),
                                  f"Held-out {metric} against seconds per update{' on ' + generator if multi else ''} "
                                  f"(mean with 95% CI over seeds). Pareto front (dashed, circled): {front_names}."))
    return figures


# ---- sample grids ----------------------------------------------------------------------------


def _grid_prompts(cells: list[CellResult]) -> list[str]:
    """The prompts of the grid's rows: the first ``grid_prompts`` eval prompts, from scores.jsonl."""
    for c in cells:
        count = int((c.info.eval or {}).get("grid_prompts") or 0)
        if c.scores and count:
            ordered = dict.fromkeys((r.get("prompt_index"), r.get("prompt")) for r in c.scores)
            return [str(p) for _, p in list(ordered)[:count]]
    return []


def sample_grid_figures(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool) -> list[Figure]:
    """Per generator and seed: every row's samples.png side by side (same prompts and noise)."""
    from PIL import Image

    plt = _plt()
    figures = []
    for generator in dict.fromkeys(k[0] for k in rows):
        keys = [k for k in rows if k[0] == generator]
        seeds = sorted({c.info.seed for k in keys for c in rows[k]})
        for seed in seeds:
            panels = [(k, c) for k in keys for c in rows[k] if c.info.seed == seed and (c.folder / "samples.png").exists()]
            if not panels:
                continue
            ncols = min(len(panels), MAX_GRID_PANELS_PER_LINE)
            nrows = math.ceil(len(panels) / ncols)
            fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for ax, (k, c) in zip(axes.flat, panels):
                with Image.open(c.folder / "samples.png") as image:
                    ax.imshow(image.convert("RGB"), interpolation="antialiased")
                ax.set_title(_label(k, multi), fontsize=9)
            slug = slugify(f"samples-{generator}-seed-{seed}" if multi else f"samples-seed-{seed}")
            prompts = _grid_prompts([c for _, c in panels])
            rows_text = ("Grid rows, top to bottom: " + "; ".join(f"({i + 1}) {p}" for i, p in enumerate(prompts)) + "."
                         if prompts else "Grid rows: the first held-out prompts, one per row.")
            figures.append(Figure(slug, _save(fig, folder, slug),
                                  f"Samples at seed {seed}{' on ' + generator if multi else ''}: every panel shows the "
                                  f"same held-out prompts with the same eval noise (columns: images per prompt). {rows_text}"))
    return figures
