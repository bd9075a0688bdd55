"""Turn a results folder into paper-style tables and figures: Markdown, LaTeX (and its PDF),
self-contained HTML, and every table as CSV and JSON."""

from __future__ import annotations

import html
from pathlib import Path

from drpo_bench.errors import UserError
from drpo_bench.compute.ledger import PHASES
from drpo_bench.report import figures as figs
from drpo_bench.report import html_page, latex
from drpo_bench.report.export import export_tables
from drpo_bench.report.provenance import code_notes, mark_rows
from drpo_bench.report.compute import compute_savings_table, load_predictions
from drpo_bench.report.results import (
    CellResult,
    Estimate,
    group_rows,
    load_results,
    load_results_and_problems,
    load_suite_snapshot,
    missing_cells,
)
from drpo_bench.report.paper import paper_table
from drpo_bench.report.scores import win_rate_table
from drpo_bench.report.settings import settings_tables
from drpo_bench.report.table import Table, slugify
from drpo_bench.report.tuning_tables import tuning_tables
from drpo_bench.report.verdicts import verdict_tables
from drpo_bench.store import write_text

#: what ``--formats`` may name; ``pdf`` compiles the LaTeX with pdflatex, csv/json export the tables
FORMATS = ("md", "tex", "html", "pdf", "csv", "json")
DEFAULT_FORMATS = ("md", "tex", "html", "csv", "json")  # pdf only on request: it needs a TeX install


def _fmt(est: Estimate | None, digits: int = 3) -> str:
    if est is None:
        return "n/a"
    if est.half_width is None:
        return f"{est.mean:.{digits}f}"
    return f"{est.mean:.{digits}f} ± {est.half_width:.{digits}f}"


def _row_label(key: tuple[str, str, str], multi_generator: bool) -> list[str]:
    generator, method, reward = key
    return ([generator] if multi_generator else []) + [method, reward]


def _metric_names(results: list[CellResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        for name in r.metrics:
            if name not in names:
                names.append(name)
    return names


def _best(values: list[Estimate | None], higher: bool) -> list[bool]:
    present = [v.mean for v in values if v is not None]
    if not present:
        return [False] * len(values)
    target = max(present) if higher else min(present)
    return [v is not None and v.mean == target for v in values]


def alignment_table(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> Table:
    results = [c for cells in rows.values() for c in cells]
    metrics = _metric_names(results)
    higher = {m: next(r.metrics[m].higher_is_better for r in results if m in r.metrics) for m in metrics}
    headers = (["generator"] if multi else []) + ["method", "train reward", "seeds"]
    headers += [f"{m} {'↑' if higher[m] else '↓'}" for m in metrics]
    columns: list[list[Estimate | None]] = []
    for m in metrics:
        columns.append([
            Estimate.of([c.metrics[m].mean for c in cells if m in c.metrics and c.metrics[m].mean is not None]) if any(m in c.metrics and c.metrics[m].mean is not None for c in cells) else None
            for cells in rows.values()
        ])
    best = [_best(col, higher[m]) for col, m in zip(columns, metrics)]
    body, bold, raw = [], [], []
    unmatched = False
    for i, (key, cells) in enumerate(rows.items()):
        label = _row_label(key, multi) + [str(len(cells))]
        if not _budget_matched(cells):
            label[-3] += " †"
            unmatched = True
        body.append(label + [_fmt(col[i]) for col in columns])
        bold.append([False] * len(label) + [b[i] for b in best])
        raw.append(_row_label(key, multi) + [len(cells)] + [col[i] for col in columns])
    note = "Best mean per column in bold. ↑ higher is better, ↓ lower is better. CI: Student-t over seeds."
    if unmatched:
        note += (" † budget not matched: the method ran another number of updates, candidates or prompts per update "
                 "than the suite (its public settings); see the settings table.")
    return Table("Held-out alignment (mean ± 95% CI over seeds)", headers, body, bold, note, slug="alignment",
                 label_columns=_labels(multi), raw=raw)


def _labels(multi: bool) -> int:
    """Leading columns that name a row: (generator,) method, train reward."""
    return 3 if multi else 2


def _budget_matched(cells: list[CellResult]) -> bool:
    return all(c.info.budget_matched for c in cells)


def metric_definitions(results: list[CellResult]) -> list[str]:
    """One footnote per metric: what it measures (model, version, formula, scale), from cell.json."""
    notes: dict[str, str] = {}
    for r in results:
        for name, definition in (r.info.metric_definitions or {}).items():
            if name not in notes and definition:
                notes[name] = "; ".join(f"{k}: {v}" for k, v in definition.items())
    for name in _metric_names(results):
        notes.setdefault(name, "definition not recorded by this metric")
    return [f"{name}: {text}" for name, text in notes.items()]


def per_task_tables(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> list[Table]:
    tables = []
    results = [c for cells in rows.values() for c in cells]
    for metric in _metric_names(results):
        tasks: list[str] = []
        for r in results:
            for t in (r.metrics[metric].per_task or {} if metric in r.metrics else {}):
                if t not in tasks:
                    tasks.append(t)
        if not tasks:
            continue
        higher = next(r.metrics[metric].higher_is_better for r in results if metric in r.metrics)
        columns = [
            [Estimate.of(v) if (v := [c.metrics[metric].per_task[t] for c in cells
                                      if metric in c.metrics and (c.metrics[metric].per_task or {}).get(t) is not None]) else None
             for cells in rows.values()]
            for t in tasks
        ]
        best = [_best(col, higher) for col in columns]
        body, bold, raw = [], [], []
        for i, key in enumerate(rows):
            label = _row_label(key, multi)
            body.append(label + [_fmt(col[i]) for col in columns])
            bold.append([False] * len(label) + [b[i] for b in best])
            raw.append(label + [col[i] for col in columns])
        headers = (["generator"] if multi else []) + ["method", "train reward"] + tasks
        tables.append(Table(f"{metric} per task (mean ± 95% CI over seeds)", headers, body, bold,
                            slug="per-task-" + slugify(metric), label_columns=_labels(multi), raw=raw))
    return tables


def _is_base(cells: list[CellResult]) -> bool:
    return cells[0].info.method_name == "base"


def gain_table(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> Table | None:
    """Each trained row minus its generator's base row, paired by seed, mean ± 95% CI.

    Base and method at seed s are evaluated on the same held-out prompts with the same noise
    (eval seed = eval.seed + s), so the per-seed difference cancels the eval draw that both
    share; its t-interval is the honest test of "better than base". Bold: the interval
    excludes zero on the metric's good side.
    """
    bases = {k[0]: cells for k, cells in rows.items() if _is_base(cells)}
    others = {k: cells for k, cells in rows.items() if not _is_base(cells) and k[0] in bases}
    if not others:
        return None
    metrics = _metric_names([c for cells in rows.values() for c in cells])
    headers = (["generator"] if multi else []) + ["method", "train reward", "paired seeds"]
    headers += [f"Δ {m}" for m in metrics]
    body, bold, raw = [], [], []
    for key, cells in others.items():
        base_by_seed = {c.info.seed: c for c in bases[key[0]]}
        pairs = [(c, base_by_seed[c.info.seed]) for c in cells if c.info.seed in base_by_seed]
        row, marks, values = [], [], []
        for m in metrics:
            diffs = [c.metrics[m].mean - b.metrics[m].mean for c, b in pairs
                     if m in c.metrics and m in b.metrics and c.metrics[m].mean is not None and b.metrics[m].mean is not None]
            if not diffs:
                row.append("n/a")
                marks.append(False)
                values.append(None)
                continue
            est = Estimate.of(diffs)
            values.append(est)
            higher = next(c.metrics[m].higher_is_better for c, _ in pairs if m in c.metrics)
            row.append(("+" if est.mean >= 0 else "") + _fmt(est))
            clear = est.half_width is not None and (est.mean - est.half_width > 0 if higher else est.mean + est.half_width < 0)
            marks.append(clear)
        label = _row_label(key, multi) + [str(len(pairs))]
        body.append(label + row)
        bold.append([False] * len(label) + marks)
        raw.append(_row_label(key, multi) + [len(pairs)] + values)
    return Table("Gain over base, paired by seed (mean ± 95% CI of the per-seed difference)", headers, body, bold,
                 slug="gain-over-base", label_columns=_labels(multi), raw=raw, note=
                 "Δ = method − base at the same seed; both are evaluated on the same held-out prompts and noise. "
                 "Bold: the 95% Student-t interval excludes zero on the better side.")


def compute_table(rows: dict[tuple[str, str, str], list[CellResult]], multi: bool) -> Table | None:
    trained = {k: v for k, v in rows.items() if v[0].info.trains and v[0].ledger.get("updates")}
    if not trained:
        return None
    seen = {p for cells in trained.values() for c in cells for p in c.ledger.get("phase_seconds", {})}
    phases = [p for p in PHASES if p in seen] + sorted(seen - set(PHASES))
    seconds = {k: Estimate.of([c.ledger["seconds_per_update"] for c in v]) for k, v in trained.items()}
    headers = (["generator"] if multi else []) + ["method", "train reward", "eff. batch", "s / update"]
    headers += [f"{p} s" for p in phases] + ["GFLOP / update", "peak mem (MiB)"]
    body = []
    for key, cells in trained.items():
        phase_means = {p: sum(c.ledger.get("phase_seconds", {}).get(p, 0.0) for c in cells) / len(cells) for p in phases}
        flops = [c.ledger.get("flops_per_update") for c in cells if c.ledger.get("flops_per_update")]
        peak = max(c.ledger.get("peak_memory_bytes", 0) for c in cells) / 2**20
        body.append(
            _row_label(key, multi)
            + [str(cells[0].info.effective_batch or "?"), _fmt(seconds[key], 4)]
            + [f"{phase_means[p]:.4f}" for p in phases]
            + [f"{sum(flops) / len(flops) / 1e9:.3g}" if flops else "not counted", f"{peak:.0f}"]
        )
    kind = next(iter(trained.values()))[0].ledger.get("peak_memory_kind", "")
    note = (f"Wall-clock per optimizer update from the ledger (first update excluded as warm-up), device "
            f"{next(iter(trained.values()))[0].ledger.get('device', '?')}. Peak memory: {kind}"
            + (" (process-wide on CPU, so it includes everything loaded before)." if kind == "process_peak_rss" else "."))
    return Table("Compute per update (matched effective batch)", headers, body, [], note, slug="compute",
                 label_columns=_labels(multi))


# ---- renderers -----------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """User-given names (aliases, task names, prompts) as literal Markdown text: no raw HTML, no
    table breaks, no emphasis."""
    text = html.escape(str(text), quote=False)
    for ch in "\\|*_`[]":
        text = text.replace(ch, "\\" + ch)
    return text


def to_markdown(table: Table) -> str:
    headers = [md_escape(h) for h in table.headers]
    lines = [f"### {md_escape(table.title)}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for i, row in enumerate(table.rows):
        row = [md_escape(c) for c in row]
        cells = [f"**{c}**" if table.bold and table.bold[i][j] else c for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    """A ``table`` float for pdflatex (ASCII-only, split when wider than the page)."""
    return latex.table_to_latex(table)


def to_html(table: Table) -> str:
    """The table in a horizontally scrolling wrapper."""
    return html_page.table_to_html(table)


# ---- the report ----------------------------------------------------------------------------


def parse_formats(formats: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"md,tex"`` or a sequence -> the formats, or a UserError naming the valid ones."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        what = f"unknown format(s) {', '.join(unknown)}" if unknown else "no format given"
        raise UserError(f"--formats: {what}; valid: {', '.join(FORMATS)} (comma-separated, e.g. --formats md,pdf)")
    return tuple(dict.fromkeys(items))


def _figures(rows: dict[tuple[str, str, str], list[CellResult]], folder: Path, multi: bool) -> list[figs.Figure]:
    return (figs.training_reward_figures(rows, folder, multi) + figs.alignment_vs_compute(rows, folder, multi)
            + figs.pareto_figures(rows, folder, multi) + figs.sample_grid_figures(rows, folder, multi))


def _paper_scale_predictions() -> dict[tuple[str, str, str], float]:
    """FLOPs per update at paper scale from the committed results/compute/*.json (when this is a checkout)."""
    folder = Path(__file__).resolve().parents[2] / "results" / "compute"
    return load_predictions(folder) if folder.is_dir() else {}


class Written(dict):
    """{format: path} of what was written, and ``missing``: {format: one line saying why not}."""

    def __init__(self) -> None:
        super().__init__()
        self.missing: dict[str, str] = {}


def build_report(folder: str | Path, formats: str | tuple[str, ...] = DEFAULT_FORMATS,
                 output: str | Path | None = None) -> Written:
    """Writes the report of the results in ``folder`` into ``output`` (default: ``folder``) and
    returns {format: path}, with ``.missing`` naming each requested format that could not be written.

    md, tex, html: report.md / report.tex / report.html (figures under figures/; the HTML embeds
    them and needs no other file); pdf: report.pdf compiled from the LaTeX with pdflatex (log in
    report.latex.log); csv, json: tables/<table>.csv and tables/tables.json. Each format is written
    on its own: a missing tool (pdflatex, a LaTeX package) costs that format only.
    """
    formats = parse_formats(formats)
    folder = Path(folder)
    results = load_results(folder)
    out = Path(output) if output is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    _, problems = load_results_and_problems(folder)
    rows = group_rows(results, load_suite_snapshot(folder))
    multi = len({k[0] for k in rows}) > 1
    tables = report_tables(folder, results, rows, multi)
    marked, code = code_notes(results)  # which code made the cells; ‡ on rows not from a clean commit's code
    mark_rows(tables[0], rows, marked)
    suite = results[0].info.suite or folder.name
    title = f"{suite}: results"
    figures = _figures(rows, out, multi) if {"md", "tex", "html", "pdf"} & set(formats) else []
    env = results[0].info.versions
    provenance = (f"{len(results)} cells; git {results[0].info.git}; torch {env.get('torch')}; "
                  f"hardware {results[0].info.hardware.get('platform')}")
    missing = missing_cells(folder, results)
    if missing and missing[0]:  # a partial store: say so before any number is read
        provenance = f"partial results: {missing[0]} of {missing[1]} planned cells missing; " + provenance
    definitions = metric_definitions(results)
    written = Written()
    if "md" in formats:
        parts = [f"# {md_escape(title)}\n", f"_{md_escape(provenance)}_\n"] + [to_markdown(t) for t in tables]
        parts += ["### Metric definitions\n\n" + "\n".join(f"- {md_escape(d)}" for d in definitions) + "\n"]
        parts += ["### Code\n\n" + "\n".join(f"- {md_escape(n)}" for n in code) + "\n"]
        if problems:
            parts += ["### Cells not in the tables\n\n" + "\n".join(f"- {md_escape(k)}: {md_escape(v)}"
                                                                    for k, v in problems.items()) + "\n"]
        parts += [f"### Figure: {md_escape(f.slug)}\n\n![{md_escape(f.slug)}]({f.path})\n\n{md_escape(f.caption)}\n"
                  for f in figures]
        written["md"] = out / "report.md"
        write_text(written["md"], "\n".join(parts))
    if "tex" in formats or "pdf" in formats:
        body = [to_latex(t) for t in tables]
        body.append("\\paragraph{Metric definitions.}\n\\begin{itemize}\n"
                    + "".join(f"\\item {latex.tex(d)}\n" for d in definitions) + "\\end{itemize}\n")
        # sloppy: a list of 16-digit code hashes has no hyphenation points to break a line at
        body.append("\\paragraph{Code.}\n{\\sloppy\n\\begin{itemize}\n" + "".join(f"\\item {latex.tex(n)}\n" for n in code)
                    + "\\end{itemize}\n\\par}\n")
        if problems:
            body.append("\\paragraph{Cells not in the tables.}\n\\begin{itemize}\n"
                        + "".join(f"\\item {latex.tex(k)}: {latex.tex(v)}\n" for k, v in problems.items())
                        + "\\end{itemize}\n")
        body.append("\\clearpage\n")
        body += [latex.figure_to_latex(f.path, f.caption, f.slug) for f in figures]
        source = (f"% {latex.tex(suite)}: generated by drpo-bench report\n% {latex.tex(provenance)}\n"
                  + latex.document(title, provenance, body))
        if "tex" in formats:
            written["tex"] = out / "report.tex"
            write_text(written["tex"], source)
        if "pdf" in formats:
            try:
                written["pdf"] = latex.build_pdf(source, out, [f.path for f in figures]).pdf
            except UserError as exc:  # no pdflatex, a missing LaTeX package, a failed compile: the others stand
                written.missing["pdf"] = str(exc)
    if "html" in formats:
        body_html = "".join(to_html(t) for t in tables)
        body_html += "<h3>Metric definitions</h3><ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in definitions) + "</ul>"
        body_html += "<h3>Code</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in code) + "</ul>"
        if problems:
            body_html += "<h3>Cells not in the tables</h3><ul>" + "".join(
                f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in problems.items()) + "</ul>"
        body_html += "<h2>Figures</h2>" + "".join(html_page.figure_to_html(out / f.path, f.caption, f.slug)
                                                  for f in figures)
        written["html"] = out / "report.html"
        write_text(written["html"], html_page.page(title, provenance, body_html))
    written.update(export_tables(tables, out, csv_files="csv" in formats, json_file="json" in formats)
                   if {"csv", "json"} & set(formats) else {})
    return written


def report_tables(folder: Path, results: list[CellResult], rows: dict[tuple[str, str, str], list[CellResult]],
                  multi: bool) -> list[Table]:
    """Every table of the report, in order."""
    tables = [alignment_table(rows, multi)]
    published = paper_table(rows, load_suite_snapshot(folder), multi)
    if published is not None:  # the paper's numbers for these rows (a paper suite's `paper:` block)
        tables.append(published)
    gains = gain_table(rows, multi)
    if gains is not None:
        tables.append(gains)
    tables += verdict_tables(rows, multi)  # method against method, paired by seed (report/verdicts.py)
    wins = win_rate_table(rows, multi)
    if wins is not None:
        tables.append(wins)
    tables += per_task_tables(rows, multi)
    tables += settings_tables(rows, multi, load_suite_snapshot(folder), folder)
    compute = compute_table(rows, multi)
    savings = compute_savings_table(results, predictions=_paper_scale_predictions())
    if savings is not None:
        tables.append(savings)
    if compute is not None:
        tables.append(compute)
    tables += tuning_tables(folder)  # a tuned method's grid and choice (docs/tuning.md); [] if none
    return tables


def summary_rows(folder: str | Path) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the alignment table, for the CLI's rich summary."""
    results = load_results(folder)
    rows = group_rows(results, load_suite_snapshot(folder))
    table = alignment_table(rows, len({k[0] for k in rows}) > 1)
    return table.headers, table.rows
