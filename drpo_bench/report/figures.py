"""The report's figures (matplotlib, Agg): one axis never mixes two metric scales.

- training reward per update, one figure per training reward;
- each held-out metric against training wall-clock seconds and TFLOPs (total = updates x the
  ledger's per-update seconds or FLOPs), per generator: a curve per method when its cells carry an
  eval history, ending on its own last evaluation (same prompts as the curve), else the end-of-training
  point from eval.json; base at 0;
- each held-out metric against seconds per update, with the Pareto front marked;
- sample grids: one labelled row per prompt, base's images beside each method's at the same noise.

Every figure is drawn at the width it is printed at (:data:`PRINT_WIDTH_IN`, the LaTeX text width)
with 8-pt text, so the legend is 8 pt on paper. A row that collapsed (its end point far outside the
others, on the bad side of base: :func:`collapsed`) is flagged in the legend and caption and drawn
at the axis edge, so it does not set the axes of the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drpo_bench.report.results import CellResult, Estimate
from drpo_bench.report.table import slugify

RowKey = tuple[str, str, str]
DPI = 150  # figures are drawn at print size: 150 dpi is crisp on paper and keeps the HTML small
PRINT_WIDTH_IN = 6.69  # the LaTeX text width (A4, 2 cm margins: 17 cm) each figure is included at
FONT_PT = 8.0  # every text of a figure, legend included: 8 pt at the printed size
GRID_METHODS_PER_FIGURE = 4  # method columns beside base in one sample-grid figure
GRID_IMAGES_PER_PROMPT = 2  # images per prompt and method in the report's sample grids
COLLAPSE_Z = 5.0  # robust z (median / 1.4826 MAD over rows) beyond which a row on base's bad side has collapsed


@dataclass
class Figure:
    slug: str  # LaTeX label fig:<slug>, HTML id
    path: str  # relative to the results folder
    caption: str
    # what was drawn, for tests and tools: y-limits per panel, collapsed rows, curve ends and end points
    meta: dict[str, Any] = field(default_factory=dict)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT_PT, "legend.fontsize": FONT_PT, "axes.titlesize": FONT_PT,
                         "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT})
    return plt


def _label(key: RowKey, multi: bool) -> str:
    generator, method, reward = key
    return (f"{generator}: " if multi else "") + (f"{method} ({reward})" if reward != "—" else method)


def _colors(rows: dict[RowKey, list[CellResult]]) -> dict[RowKey, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10").colors
    return {k: cycle[i % len(cycle)] for i, k in enumerate(rows)}


def _save(fig: Any, folder: Path, name: str, tight: bool = True) -> str:
    rel = f"figures/{name}.png"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    if tight:
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


# ---- collapsed rows -------------------------------------------------------------------------


def collapsed(values: dict[RowKey, float], base: float | None, higher: bool, z: float = COLLAPSE_Z) -> set[RowKey]:
    """Rows whose value lies on base's bad side and more than ``z`` robust standard deviations
    (1.4826 x the median absolute deviation over all rows) from the median of all rows.

    A method that collapsed (RAFT's clip score falling from 25 to -4) would otherwise set the axis
    range and flatten every other difference; a row better than base is never "collapsed".
    """
    if len(values) < 3:
        return set()
    xs = sorted(values.values())
    median = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    deviations = sorted(abs(x - median) for x in xs)
    mad = deviations[len(deviations) // 2] if len(deviations) % 2 else (
        deviations[len(deviations) // 2 - 1] + deviations[len(deviations) // 2]) / 2
    scale = 1.4826 * mad
    if scale <= 0:
        return set()
    reference = median if base is None else base
    out = set()
    for key, x in values.items():
        bad_side = x < reference if higher else x > reference
        if bad_side and abs(x - median) / scale > z:
            out.add(key)
    return out


def _limits(values: list[float], pad: float = 0.06) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    return low - pad * span, high + pad * span


def _off_scale(ax: Any, x: float, value: float, limits: tuple[float, float], color: Any, label: str) -> None:
    """A collapsed row's end point: a triangle at the axis edge it lies beyond, its value written beside."""
    top = value > limits[1]
    edge = limits[1] if top else limits[0]
    ax.plot([x], [edge], marker="^" if top else "v", color=color, markersize=8, clip_on=False, linestyle="none",
            label=label)
    ax.annotate(f"{value:.3g}", (x, edge), textcoords="offset points", xytext=(6, -10 if top else 4), color=color)


def _collapse_text(names: list[str], values: dict[str, float], base: float | None) -> str:
    if not names:
        return ""
    parts = ", ".join(f"{n} (end point {values[n]:.3g}" + (f", base {base:.3g})" if base is not None else ")")
                      for n in names)
    return (f" Collapsed, drawn as a triangle at the axis edge and kept from setting the axes: {parts}.")


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
        fig, ax = plt.subplots(figsize=(PRINT_WIDTH_IN, 3.4))
        curves: dict[RowKey, tuple[list[float], list[Estimate]]] = {}
        for row_key in keys:
            logs = [c.train_log for c in rows[row_key] if c.train_log and key in c.train_log[0]]
            length = min(len(log) for log in logs)
            steps = [logs[0][i]["step"] for i in range(length)]
            curves[row_key] = (steps, [Estimate.of([log[i][key] for log in logs]) for i in range(length)])
        # collapse on the last logged reward, against the rows' median (train logs have no base row)
        gone = collapsed({k: c[1][-1].mean for k, c in curves.items()}, None, higher=True)
        kept: list[float] = []
        for row_key, (steps, est) in curves.items():
            label = _label(row_key, multi) + (" - collapsed" if row_key in gone else "")
            ax.plot(steps, [e.mean for e in est], label=label, color=colors[row_key],
                    linestyle="--" if row_key in gone else "-")
            if len(rows[row_key]) > 1:
                ax.fill_between(steps, [e.mean - _half(e) for e in est], [e.mean + _half(e) for e in est],
                                color=colors[row_key], alpha=0.15, linewidth=0)
            if row_key not in gone:
                kept += [e.mean - _half(e) for e in est] + [e.mean + _half(e) for e in est]
        limits = _limits(kept)
        if gone and limits:
            ax.set_ylim(*limits)
        ax.set_xlabel("optimizer update")
        ax.set_ylabel(f"training reward {reward}\n({key}, own scale)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.3)
        slug = "train-reward-" + slugify(reward)
        names = [_label(k, multi) for k in curves if k in gone]
        figures.append(Figure(slug, _save(fig, folder, slug),
                              f"Training reward {reward} per optimizer update: mean over seeds, band 95% CI over "
                              f"seeds (each reward on its own axis)."
                              + (f" Collapsed (dashed, last value far below the other rows'; the y-range is set by "
                                 f"the others, so it leaves the axes): {', '.join(names)}." if names else "")))
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


def _history_base(cells: list[CellResult], metric: str) -> Estimate | None:
    """The step-0 evaluation of a trained row's history: the base generator on the history's prompts."""
    values = [r[metric] for c in cells for r in c.eval_history[:1] if r.get("step") == 0
              and isinstance(r.get(metric), (int, float))]
    return Estimate.of(values) if len(values) == len(cells) else None


def _prompt_counts(rows: dict[RowKey, list[CellResult]], keys: list[RowKey]) -> tuple[int | None, int | None]:
    """(prompts of the evaluations during training, prompts of the final evaluation), when recorded."""
    counts = {r.get("n_prompts") for k in keys for c in rows[k] for r in c.eval_history if r.get("n_prompts")}
    final = {len({r.get("prompt_index") for r in c.scores}) for k in keys for c in rows[k] if c.scores}
    return (counts.pop() if len(counts) == 1 else None), (max(final) if final else None)


def alignment_vs_compute(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool) -> list[Figure]:
    """Per generator and held-out metric: metric vs training seconds (left) and TFLOPs (right).

    A row whose cells carry an eval history is a curve that ends on its own last evaluation (the same
    prompts as the rest of the curve, its marker the mean with 95% CI over seeds); base is the curves'
    step 0. A row without one is its end-of-training point from eval.json (all eval prompts), hollow,
    with base's eval.json point: the caption says which prompts each was measured on.
    """
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
        axes_spec = [("training wall-clock (s)", 0)] + ([("training compute (TFLOPs)", 1)] if any_flops else [])
        history_prompts, final_prompts = _prompt_counts(rows, keys)
        for metric, higher in _metrics([c for k in keys for c in rows[k]]):
            # per row: the curve (x per axis, y) ending on its own last evaluation, or the eval.json end point
            drawn: dict[RowKey, dict[str, Any]] = {}
            for k in trained:
                cells = [c for c in rows[k] if metric in c.metrics and c.metrics[metric].mean is not None
                         and _totals(c)[0]]
                if not cells:
                    continue
                entry: dict[str, Any] = {"curves": [], "points": []}
                for _, which in axes_spec:
                    per_update = [(c.ledger.get("seconds_per_update") if which == 0 else
                                   (c.ledger.get("flops_per_update") or 0) / 1e12) for c in cells]
                    curve = _history_curve(cells, metric, [p for p in per_update if p]) if all(per_update) else None
                    entry["curves"].append(curve)
                    if curve is not None:
                        entry["points"].append((Estimate.of([curve[0][-1]]), curve[1][-1]))
                    else:
                        xs = [_totals(c)[which] for c in cells]
                        pairs = [(x, c) for x, c in zip(xs, cells) if x is not None]
                        entry["points"].append((Estimate.of([x for x, _ in pairs]),
                                                Estimate.of([c.metrics[metric].mean for _, c in pairs])) if pairs else None)
                entry["history"] = entry["curves"][0] is not None
                drawn[k] = entry
            if not drawn:
                continue
            with_history = [k for k in drawn if drawn[k]["history"]]
            without = [k for k in drawn if not drawn[k]["history"]]
            history_base = next((b for k in with_history if (b := _history_base(rows[k], metric)) is not None), None)
            final_base = _metric_estimate(rows[base], metric) if base is not None else None
            end_values = {k: drawn[k]["points"][0][1].mean for k in drawn}
            gone = collapsed({**end_values, **({base: final_base.mean} if base and final_base else {})},
                             (history_base or final_base).mean if (history_base or final_base) else None, higher) - {base}
            fig, axes = plt.subplots(1, len(axes_spec), figsize=(PRINT_WIDTH_IN, 3.0), squeeze=False, sharey=True)
            meta: dict[str, Any] = {"ylim": [], "collapsed": sorted(_label(k, multi) for k in gone), "curve_ends": {},
                                    "points": {}}
            kept: list[float] = []
            for col, (ax, (xlabel, _)) in enumerate(zip(axes[0], axes_spec)):
                for reference, prompts in ((history_base, history_prompts), (final_base if without else None, final_prompts)):
                    if reference is None or base is None:
                        continue
                    hollow = reference is final_base and bool(with_history)
                    ax.errorbar([0.0], [reference.mean], yerr=[[_half(reference)], [_half(reference)]], fmt="s",
                                color=colors[base], capsize=3, mfc="white" if hollow else colors[base],
                                label=(_label(base, multi) + " (step 0" + (f", {prompts} prompts" if prompts and with_history and without else "")
                                       + ")") if col == 0 else None)
                    ax.axhline(reference.mean, color=colors[base], linestyle=":", linewidth=0.8)
                    kept += [reference.mean - _half(reference), reference.mean + _half(reference)]
                for k, entry in drawn.items():
                    curve, point = entry["curves"][col], entry["points"][col]
                    label = _label(k, multi) + (" - collapsed" if k in gone else "") if col == 0 else None
                    if curve is not None:
                        cx, cy = curve
                        if cx[0] > 0 and history_base is not None:
                            cx, cy = [0.0] + cx, [history_base] + cy
                        ax.plot(cx, [e.mean for e in cy], color=colors[k], linewidth=1.2)
                        if col == 0:
                            meta["curve_ends"][_label(k, multi)] = (cx[-1], cy[-1].mean)
                        ax.fill_between(cx, [e.mean - _half(e) for e in cy], [e.mean + _half(e) for e in cy],
                                        color=colors[k], alpha=0.15, linewidth=0)
                        if k not in gone:
                            kept += [e.mean - _half(e) for e in cy] + [e.mean + _half(e) for e in cy]
                    if point is None:
                        continue
                    x, y = point
                    entry.setdefault("xy", []).append((x.mean, y.mean))
                    if col == 0:
                        meta["points"][_label(k, multi)] = (x.mean, y.mean)
                    if k in gone:
                        continue
                    ax.errorbar([x.mean], [y.mean], xerr=[[_half(x)], [_half(x)]], yerr=[[_half(y)], [_half(y)]],
                                fmt="o", color=colors[k], capsize=3, mfc=colors[k] if curve is not None else "white",
                                label=label)
                    kept += [y.mean - _half(y), y.mean + _half(y)]
                limits = _limits(kept)
                if limits is not None:
                    ax.set_ylim(*limits)
                    meta["ylim"].append(limits)
                    for k in gone:
                        x, y = drawn[k]["xy"][col]
                        _off_scale(ax, x, y, limits, colors[k], (_label(k, multi) + " - collapsed") if col == 0 else None)
                ax.set_xlabel(xlabel)
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # toy runs: tiny TFLOPs
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel(f"{metric} ({_arrow(higher)})")
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
                       bbox_to_anchor=(0.5, 0.0))
            fig.tight_layout(rect=(0, 0.07 * math.ceil(len(labels) / 4) + 0.02, 1, 1))
            slug = slugify(f"{metric}-vs-compute" + (f"-{generator}" if multi else ""))
            on = (f"the first {history_prompts} held-out prompts" if history_prompts else "the prompts evaluated during training")
            caption = (f"Held-out {metric} ({_arrow(higher)}) against training cost{' on ' + generator if multi else ''}: "
                       f"total wall-clock seconds{' and TFLOPs' if any_flops else ''} (updates x per-update cost from "
                       "the ledger), mean over seeds with 95% CI.")
            if with_history:
                caption += (f" Curves ({', '.join(_label(k, multi) for k in with_history)}): evaluations during training "
                            f"on {on}, band 95% CI over seeds, each ending on its own last evaluation (filled marker, "
                            f"same prompts); they start at base (step 0, filled square) on the same prompts.")
                if final_prompts and history_prompts and final_prompts != history_prompts:
                    caption += (f" The tables' end-of-training numbers use all {final_prompts} held-out prompts, so "
                                "they differ from the curves' end points.")
            if without:
                caption += (f" No evaluation history for {', '.join(_label(k, multi) for k in without)}: "
                            f"end of training on all {final_prompts or 'the'} held-out prompts (hollow markers"
                            + (", with base's hollow square on the same prompts" if with_history else ", base at 0")
                            + ").")
            caption += _collapse_text([_label(k, multi) for k in drawn if k in gone],
                                      {_label(k, multi): end_values[k] for k in drawn},
                                      (history_base or final_base).mean if (history_base or final_base) else None)
            if any_flops and uncounted:
                caption += f" FLOPs not counted for {', '.join(uncounted)}: absent from the TFLOPs panel."
            figures.append(Figure(slug, _save(fig, folder, slug, tight=False), caption, meta))
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
            estimates = {k: (Estimate.of([c.ledger["seconds_per_update"] for c in rows[k]]), y)
                         for k in trained if (y := _metric_estimate(rows[k], metric)) is not None}
            if not estimates:
                continue
            b = _metric_estimate(rows[base], metric) if base is not None else None
            gone = collapsed({k: y.mean for k, (_, y) in estimates.items()} | ({base: b.mean} if b else {}),
                             b.mean if b else None, higher) - {base}
            fig, ax = plt.subplots(figsize=(PRINT_WIDTH_IN, 3.2))
            labels = list(estimates)
            points = [(x.mean, y.mean) for x, y in estimates.values()]
            kept: list[float] = []
            for k, (x, y) in estimates.items():
                if k in gone:
                    continue
                ax.errorbar([x.mean], [y.mean], xerr=[[_half(x)], [_half(x)]], yerr=[[_half(y)], [_half(y)]],
                            fmt="o", color=colors[k], capsize=3, label=_label(k, multi))
                kept += [y.mean - _half(y), y.mean + _half(y)]
            front = pareto_front(points, higher)
            joined = len(front) > 1
            if joined:
                ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="k", linewidth=1,
                        linestyle="--", drawstyle="steps-post", zorder=0)
            ax.scatter([points[i][0] for i in front if labels[i] not in gone],
                       [points[i][1] for i in front if labels[i] not in gone], s=160, facecolors="none",
                       edgecolors="k", linewidths=1.2, label="Pareto front", zorder=3)
            if b is not None:
                ax.axhline(b.mean, color=colors[base], linestyle=":", linewidth=1, label=_label(base, multi))
                kept.append(b.mean)
            limits = _limits(kept)
            meta = {"ylim": [limits] if limits else [], "collapsed": sorted(_label(k, multi) for k in gone)}
            if limits is not None:
                ax.set_ylim(*limits)
                for k in gone:
                    x, y = estimates[k]
                    _off_scale(ax, x.mean, y.mean, limits, colors[k], _label(k, multi) + " - collapsed")
            xs = [p[0] for p in points]
            if min(xs) > 0 and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
            ax.set_xlabel("seconds per optimizer update (lower is cheaper)")
            ax.set_ylabel(f"{metric} ({_arrow(higher)})")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            slug = slugify(f"pareto-{metric}" + (f"-{generator}" if multi else ""))
            front_names = ", ".join(_label(labels[i], multi) for i in front)
            figures.append(Figure(slug, _save(fig, folder, slug),
                                  f"Held-out {metric} against seconds per update{' on ' + generator if multi else ''} "
                                  f"(end of training, all eval prompts; mean with 95% CI over seeds; dotted line: base). "
                                  f"Pareto front ({'circled, joined by a dashed step line' if joined else 'circled'}): "
                                  f"{front_names}."
                                  + _collapse_text([_label(k, multi) for k in labels if k in gone],
                                                   {_label(k, multi): estimates[k][1].mean for k in labels},
                                                   b.mean if b else None), meta))
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


def grid_tiles(path: Path, rows: int, columns: int, padding: int = 2) -> list[list[Any]]:
    """The images of a samples.png (torchvision ``make_grid``: ``columns`` images per prompt row,
    ``padding`` px around each) as [prompt row][image] PIL images."""
    from PIL import Image

    with Image.open(path) as image:
        grid = image.convert("RGB")
    width = (grid.width - padding) // columns - padding
    height = (grid.height - padding) // rows - padding
    return [[grid.crop((padding + c * (width + padding), padding + r * (height + padding),
                        padding + c * (width + padding) + width, padding + r * (height + padding) + height))
             for c in range(columns)] for r in range(rows)]


def _strip(tiles: list[Any], gap: int = 2) -> Any:
    """Images side by side with a white gap."""
    from PIL import Image

    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    return out


def _wrap(text: str, width: int = 26) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3]) or text


def sample_grid_figures(rows: dict[RowKey, list[CellResult]], folder: Path, multi: bool) -> list[Figure]:
    """Per generator, at its lowest seed: one row per grid prompt (labelled with the prompt), base's
    first images beside each method's at the same noise; at most GRID_METHODS_PER_FIGURE methods per figure."""
    plt = _plt()
    figures = []
    for generator in dict.fromkeys(k[0] for k in rows):
        keys = [k for k in rows if k[0] == generator]
        seeds = sorted({c.info.seed for k in keys for c in rows[k]})
        if not seeds:
            continue
        seed = seeds[0]
        panels = {k: c for k in keys for c in rows[k] if c.info.seed == seed and (c.folder / "samples.png").exists()}
        prompts = _grid_prompts(list(panels.values()))
        if not panels or not prompts:
            continue
        per_prompt = int((next(iter(panels.values())).info.eval or {}).get("images_per_prompt") or 0)
        if per_prompt < 1:
            continue
        shown = min(GRID_IMAGES_PER_PROMPT, per_prompt)
        base = next((k for k in panels if _is_base(rows[k])), None)
        methods = [k for k in panels if k != base]
        chunks = [methods[i:i + GRID_METHODS_PER_FIGURE] for i in range(0, len(methods), GRID_METHODS_PER_FIGURE)] or [[]]
        tiles = {k: grid_tiles(c.folder / "samples.png", len(prompts), per_prompt) for k, c in panels.items()}
        for part, chunk in enumerate(chunks):
            columns = ([base] if base else []) + chunk
            height = 0.62 * len(prompts) + 0.35
            fig, axes = plt.subplots(len(prompts), len(columns), figsize=(PRINT_WIDTH_IN, height), squeeze=False,
                                     gridspec_kw={"wspace": 0.04, "hspace": 0.06})
            for r, prompt in enumerate(prompts):
                for j, k in enumerate(columns):
                    ax = axes[r][j]
                    ax.imshow(_strip(tiles[k][r][:shown]), interpolation="antialiased")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                    if r == 0:
                        ax.set_title(_label(k, multi), fontsize=FONT_PT)
                    if j == 0:
                        ax.set_ylabel(_wrap(f"({r + 1}) {prompt}").replace("$", r"\$"), rotation=0, ha="right",
                                      va="center", fontsize=FONT_PT)  # a prompt's "$" is text, not mathtext
            fig.subplots_adjust(left=0.25, right=0.99, top=1 - 0.3 / height, bottom=0.01)
            suffix = f"-{part + 1}" if len(chunks) > 1 else ""
            slug = slugify((f"samples-{generator}" if multi else "samples") + f"-seed-{seed}{suffix}")
            figures.append(Figure(slug, _save(fig, folder, slug, tight=False),
                                  f"Samples at seed {seed}{' on ' + generator if multi else ''}"
                                  f"{f' (part {part + 1} of {len(chunks)})' if len(chunks) > 1 else ''}: one row per "
                                  f"held-out prompt (its text at the left), the first {shown} of its {per_prompt} "
                                  f"images per method; every column draws them from the same eval noise, so "
                                  f"{'base (left) and each method show the same noise side by side' if base else 'columns are comparable image by image'}. "
                                  f"Rows, top to bottom: " + "; ".join(f"({i + 1}) {p}" for i, p in enumerate(prompts))
                                  + ". Other seeds: each cell's samples.png.",
                                  {"rows": [f"({i + 1}) {p}" for i, p in enumerate(prompts)],
                                   "columns": [_label(k, multi) for k in columns], "images_per_prompt": shown}))
    return figures
