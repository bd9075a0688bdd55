"""Real prompt sets, read from local files only.

File formats, chosen by extension:

- ``.txt``: one prompt per line (blank lines skipped);
- ``.jsonl``: one JSON object per line, the prompt in ``column`` (GenEval's
  ``evaluation_metadata.jsonl``: ``prompt``, task in ``tag``);
- ``.json``: a list of strings, or of objects with ``column`` (HPDv2's ``benchmark/*.json``);
- ``.csv`` / ``.tsv``: a header row, the prompt in ``column`` (Parti's ``PartiPrompts.tsv``:
  ``Prompt``, category ``Category``; DrawBench's CSV: ``Prompts``, ``Category``).

A folder reads every supported file inside it, sorted by name (HPDv2's four style files).
Splits: "train" and "eval". The benchmarks that are only evaluation sets (Parti, DrawBench,
HPDv2, GenEval) have no train split unless ``train`` names a file: training on the evaluation
prompts would leak.

A missing file is an error that says where to get it; there is deliberately no fallback to a
hub dataset: the hub copies are not the same prompt lists (Pick-a-Pic's ``test_unique`` split has
~500 captions, DrPO's ``data/pickscore/test.txt`` 2048), and a silently different eval set
makes every number incomparable with the paper's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

from drpo_bench.errors import UserError
from drpo_bench.prompts.base import Prompt, PromptSet
from drpo_bench.registry import PROMPTS, StrictConfig

SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv")


def read_prompt_file(path: Path, column: str, task_column: str | None = None) -> list[Prompt]:
    """Prompts from one file (format by extension, see the module docstring), in file order."""
    suffix = path.suffix.lower()
    rows: list[Any]
    if suffix == ".txt":
        return [Prompt(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, dict):  # {"prompts": [...]} or similar single-key wrappers
            rows = next((v for v in rows.values() if isinstance(v, list)), [])
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise UserError(f"{path}: unsupported prompt file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    prompts = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            prompts.append(Prompt(row.strip()))
            continue
        if not isinstance(row, dict) or column not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise UserError(f"{path}: row {i + 1} has no column {column!r} (has {keys}); set `column` to the prompt column")
        task = row.get(task_column) if task_column else None
        prompts.append(Prompt(str(row[column]).strip(), str(task) if task is not None else None))
    return [p for p in prompts if p.text]


def read_prompts(location: Path, column: str, task_column: str | None) -> list[Prompt]:
    if location.is_dir():
        files = sorted(p for p in location.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"{location}: no prompt files ({', '.join(SUFFIXES)}) inside")
        return [p for f in files for p in read_prompt_file(f, column, task_column)]
    return read_prompt_file(location, column, task_column)


class FilePromptConfig(StrictConfig):
    train: str | None = None  # file or folder with the training prompts; None = the set's default
    eval: str | None = None  # file or folder with the held-out prompts; None = the set's default
    column: str | None = None  # prompt column for jsonl/json/csv/tsv; None = the set's default
    limit: int | None = None  # keep the first N prompts of each split (smoke runs); None = all


class FilePromptSet(PromptSet):
    """A benchmark's prompts from local files; a missing file is a UserError saying how to get it."""

    Config: ClassVar[type[StrictConfig]] = FilePromptConfig
    title: ClassVar[str] = ""
    default_files: ClassVar[dict[str, str | None]] = {}  # split -> default local path (None: no such split)
    default_column: ClassVar[str] = "prompt"
    task_column: ClassVar[str | None] = None
    how: ClassVar[str] = ""  # where the public files come from and where to put them

    config: FilePromptConfig

    def split(self, name: str) -> list[Prompt]:
        if name not in ("train", "eval"):
            raise UserError(f"{self.title}: unknown split {name!r}; use 'train' or 'eval'")
        location = getattr(self.config, name) or self.default_files.get(name)
        if location is None:
            raise UserError(
                f"{self.title} is an evaluation benchmark with no {name!r} split; set `{name}:` to a prompt file "
                "(training on the evaluation prompts would leak into the scores)."
            )
        column = self.config.column or self.default_column
        path = Path(location).expanduser()
        if not path.exists():
            raise UserError(self.missing_message(name, path))
        prompts = read_prompts(path, column, self.task_column)
        if not prompts:
            raise UserError(f"{self.title}: {path} holds no prompts")
        return prompts[: self.config.limit] if self.config.limit else prompts

    def missing_message(self, split: str, path: Path) -> str:
        """Names the expected file, where the public one comes from, and the suite key that points elsewhere."""
        where = path if path.is_absolute() else f"{path} (relative to the working directory {Path.cwd()})"
        return (
            f"{self.title}: no {split!r} prompt file at {where}. {self.how} "
            f"To read it from elsewhere, set it in the suite: "
            f"`prompts: {{name: {self.registry_name}, args: {{{split}: /path/to/file}}}}`. "
            "No other prompt set is substituted: scores on a different set are not comparable."
        )


@PROMPTS.register("pickapic-v2")
class PickAPicV2(FilePromptSet):
    """Pick-a-Pic v2 prompts: DrPO's train split and its test split (the paper's main table)."""

    title = "Pick-a-Pic v2"
    default_files = {"train": "data/pickscore/train.txt", "eval": "data/pickscore/test.txt"}
    how = ("The DrPO paper's splits are data/pickscore/train.txt and data/pickscore/test.txt (2048 prompts) in "
           "the public repository github.com/UGVly/DrPO: copy that data/pickscore/ folder to ./data/pickscore/.")


@PROMPTS.register("parti")
class PartiPrompts(FilePromptSet):
    """PartiPrompts (Yu et al., 2022): 1 632 prompts in 12 categories; evaluation only."""

    title = "PartiPrompts"
    default_files = {"train": None, "eval": "data/parti/PartiPrompts.tsv"}
    default_column = "Prompt"
    task_column = "Category"
    how = ("Get PartiPrompts.tsv (1632 prompts) from the root of github.com/google-research/parti and save it as "
           "./data/parti/PartiPrompts.tsv.")


@PROMPTS.register("drawbench")
class DrawBench(FilePromptSet):
    """DrawBench (Saharia et al., 2022, Imagen): 200 prompts in 11 categories; evaluation only."""

    title = "DrawBench"
    default_files = {"train": None, "eval": "data/drawbench/DrawBench.csv"}
    default_column = "Prompts"
    task_column = "Category"
    how = ("DrawBench's 200 prompts are the sheet published with Imagen (Saharia et al., 2022, arXiv:2205.11487), "
           "also the `test` split of the hub dataset shunk031/DrawBench: save them as CSV with the header "
           "Prompts,Category at ./data/drawbench/DrawBench.csv.")


@PROMPTS.register("hpdv2")
class HPDv2Test(FilePromptSet):
    """HPD v2 test prompts (Wu et al., 2023): 3 200 prompts in four styles; evaluation only."""

    title = "HPDv2 test"
    default_files = {"train": None, "eval": "data/hpdv2"}
    default_column = "prompt"
    how = ("The HPD v2 benchmark prompts come with the hpsv2 package (github.com/tgxs002/HPSv2): "
           "`hpsv2.benchmark_prompts('all')` gives them by style; save each style as a JSON list of prompts "
           "(anime.json, concept-art.json, paintings.json, photo.json) in ./data/hpdv2/.")


@PROMPTS.register("geneval")
class GenEvalPrompts(FilePromptSet):
    """GenEval (Ghosh et al., 2023): 553 compositional prompts tagged by task; evaluation only."""

    title = "GenEval"
    default_files = {"train": None, "eval": "data/geneval/evaluation_metadata.jsonl"}
    default_column = "prompt"
    task_column = "tag"
    how = ("Get prompts/evaluation_metadata.jsonl (553 prompts; tasks from its `tag` field) from "
           "github.com/djghosh13/geneval and save it as ./data/geneval/evaluation_metadata.jsonl.")
