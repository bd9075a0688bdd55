"""The report's "Tuning" tables: a tuned method's grid, the validation score of every configuration,
the chosen one and the rule (from ``<results>/tuning/<method-id>.json``, drpo_bench/suite/tuning_records.py)."""

from __future__ import annotations

from pathlib import Path

from drpo_bench.errors import UserError
from drpo_bench.report.table import Table


def tuning_tables(folder: Path) -> list[Table]:
    """One table per tuning record in ``folder/tuning``; [] when the run tuned nothing."""
    from drpo_bench.suite.tuning_records import TUNING_DIR, label, read_record, record_seeds, score_text, stability_text

    tables = []
    for path in sorted((folder / TUNING_DIR).glob("*.json")):
        try:
            record = read_record(path)
        except UserError as exc:
            raise UserError(f"{exc} (the report reads {path}; move it away to report without it)") from None
        keys = list(record["grid"])
        arrow = "↑" if record.get("higher_is_better") else "↓"
        headers = [*keys, f"validation {record['metric']} {arrow} (mean ± 95% CI, prompts)", "chosen"]
        rows, raw, bold = [], [], []
        for c in record["configs"]:
            rows.append([*(str(c["settings"][k]) for k in keys), score_text(c), "yes" if c["chosen"] else ""])
            raw.append([*(c["settings"][k] for k in keys), c["mean"], "yes" if c["chosen"] else ""])
            bold.append([False] * len(keys) + [bool(c["chosen"])] * 2)
        seeds = record_seeds(record)
        at = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (score: the mean over them)"
        note = (f"Every configuration trained at {at} for {record['steps']} updates on the train "
                f"prompts less the `{record['split']}` split and was scored on that split ({record['images_per_prompt']} "
                f"images per prompt), never on the held-out eval prompts. Chosen: {label(record['chosen'])}, by the "
                f"rule: {record['rule']}. {stability_text(record)} The tables above run the chosen setting on every seed.")
        tables.append(Table(f"Tuning: {record['method_id']} ({record['method']})", headers, rows, bold, note=note,
                            slug=f"tuning-{record['method_id']}", label_columns=len(keys), raw=raw))
    return tables
