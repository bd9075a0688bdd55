"""Offline preference data: a folder of images with scores or pairwise preferences.

Offline methods (``drpo-offline``, ``dpo-offline``) train from such a folder instead of ranking
the generator's own candidates online. The folder::

    DATASET/
      dataset.json     optional: how it was made (``drpo-bench make-dataset`` writes it)
      scores.jsonl     {"prompt": str, "image": "images/0000_00.png", "score": float} per line
      pairs.jsonl      {"caption": str, "image_0": path, "image_1": path, "label_0": 1 | 0 | 0.5}
      images/...       the images (PNG or JPEG), all of one size

``pairs.jsonl`` follows Pick-a-Pic v2's column names (``caption``, ``label_0``, ``label_1``;
Kirstain et al., "Pick-a-Pic", https://arxiv.org/abs/2305.01569): ``label_0`` = 1 when image 0
was preferred, 0 when image 1 was, 0.5 for a tie; ``label_1``, if given, must be
``1 - label_0``; ``prompt`` may stand for ``caption``. Image paths are relative to the folder
(Pick-a-Pic's ``jpg_0`` bytes saved as ``<image_0_uid>.jpg``, say). Other keys are kept out of
the way (Pick-a-Pic rows carry many). Ties are dropped, as Diffusion-DPO drops them.

Positives and negatives of a prompt (``select``): its images ranked by score, best first (ties
kept in file order), the top ``n_pos`` and the bottom ``n_neg``. A pairs file is reduced to
each image's win rate among its decided pairs, so with disjoint pairs the positives are the
preferred images and the negatives the rejected ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from drpo_bench.errors import UserError
from drpo_bench.registry import StrictConfig

SCORES_FILE = "scores.jsonl"
PAIRS_FILE = "pairs.jsonl"
META_FILE = "dataset.json"
FORMAT = "drpo-bench-offline/1"

Preferences = Literal["scores", "pairs"]


class OfflineDataConfig(StrictConfig):
    """The dataset fields every offline method's config has."""

    # the dataset folder; in a suite, a relative path is resolved against the suite file's directory
    dataset: str = Field(min_length=1)
    preferences: Preferences = "scores"  # which file ranks the images: scores.jsonl or pairs.jsonl


def make_command(folder: Path | str) -> str:
    """The command that makes a shapes-world dataset at ``folder`` (named in errors)."""
    return f"drpo-bench make-dataset --out {folder} --reward shapes-checker --images-per-prompt 16"


def check_present(config: OfflineDataConfig, who: str) -> None:
    """Refuse, before any cell trains, a dataset folder or preferences file that is not there."""
    root = Path(config.dataset).expanduser()
    wanted = root / (SCORES_FILE if config.preferences == "scores" else PAIRS_FILE)
    if not root.is_dir():
        raise UserError(
            f"{who}: dataset folder {root} does not exist (in a suite, a relative `dataset:` is resolved against "
            f"the suite file's directory). Make it with `{make_command(root)}` (the suite's comments name the exact "
            "command), or point `dataset:` at an existing folder."
        )
    if not wanted.is_file():
        other = PAIRS_FILE if config.preferences == "scores" else SCORES_FILE
        hint = (f" It has {other}: set `preferences: {'pairs' if other == PAIRS_FILE else 'scores'}`."
                if (root / other).is_file() else f" Make one with `{make_command(root)}`.")
        raise UserError(f"{who}: dataset folder {root} has no {wanted.name}.{hint}")


@dataclass
class PromptImages:
    """One prompt's images in the dataset, ranked."""

    index: torch.Tensor  # (n,) rows of OfflineDataset.images
    score: torch.Tensor  # (n,) float: the score, or the win rate for pairs; larger is better
    order: torch.Tensor = field(init=False)  # (n,) positions into index, best first (stable)

    def __post_init__(self) -> None:
        self.order = torch.sort(self.score, descending=True, stable=True).indices


@dataclass
class OfflineDataset:
    root: Path
    preferences: Preferences
    images: torch.Tensor  # (N, 3, H, W) uint8
    files: list[str]  # (N,) paths relative to root
    prompts: dict[str, PromptImages]
    meta: dict[str, Any]
    dropped_ties: int = 0  # pairs with label_0 = 0.5 (not used)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def min_images(self) -> int:
        return min(len(p.index) for p in self.prompts.values())

    def check_counts(self, n_pos: int, n_neg: int, who: str) -> None:
        """Every prompt needs n_pos + n_neg images so positives and negatives are disjoint."""
        short = {text: len(p.index) for text, p in self.prompts.items() if len(p.index) < n_pos + n_neg}
        if short:
            example = next(iter(short.items()))
            raise UserError(
                f"{who}: n_pos + n_neg = {n_pos + n_neg}, but {len(short)} of the {len(self.prompts)} prompts in "
                f"{self.root} have fewer ranked images (e.g. {example[0]!r}: {example[1]}; the fewest is "
                f"{self.min_images()}). Lower n_pos/n_neg, or make the dataset with more images per prompt."
            )

    def select(self, prompts: list[str], n_pos: int, n_neg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``images`` for each prompt's top ``n_pos`` and bottom ``n_neg``: (P, n_pos), (P, n_neg)."""
        pos, neg = [], []
        for text in prompts:
            entry = self.prompts.get(text)
            if entry is None:
                raise UserError(
                    f"prompt {text!r} is not in the dataset {self.root} ({len(self.prompts)} prompts). An offline "
                    "dataset must cover the suite's train prompts: make it from the same prompt set "
                    f"(`{make_command(self.root)} --prompts <the suite's prompts>`)."
                )
            ranked = entry.index[entry.order]  # (n,) best first
            pos.append(ranked[:n_pos])
            neg.append(ranked[len(ranked) - n_neg :])
        return torch.stack(pos), torch.stack(neg)

    def score_gap(self, prompts: list[str], n_pos: int, n_neg: int) -> float:
        """Mean score of the chosen positives minus the negatives' (a log line, as online DrPO's)."""
        gaps = []
        for text in prompts:
            entry = self.prompts[text]
            ranked = entry.score[entry.order]
            gaps.append(float(ranked[:n_pos].mean() - ranked[len(ranked) - n_neg :].mean()))
        return sum(gaps) / len(gaps)

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (...,) -> float images (..., 3, H, W) in [0, 1]."""
        return self.images[rows].float() / 255.0


# ---- loading ---------------------------------------------------------------------------------


def load_dataset(folder: str | Path, preferences: Preferences = "scores") -> OfflineDataset:
    """Read and validate a dataset folder; every error names the file (and line) and a fix."""
    root = Path(folder).expanduser()
    check_present(OfflineDataConfig(dataset=str(root), preferences=preferences), "offline dataset")
    meta: dict[str, Any] = {}
    if (root / META_FILE).is_file():
        meta = json_object((root / META_FILE).read_text(), str(root / META_FILE), "fix or delete it (it is optional)")
    path = root / (SCORES_FILE if preferences == "scores" else PAIRS_FILE)
    rows = _read_jsonl(path)
    loader = _ImageTable(root, path)
    if preferences == "scores":
        per_prompt = _scores(rows, path, loader, higher_is_better=bool(meta.get("higher_is_better", True)))
        dropped = 0
    else:
        per_prompt, dropped = _pairs(rows, path, loader)
    if not per_prompt:
        raise UserError(f"{path}: no usable rows (pairs that are all ties count as none); nothing to train from")
    return OfflineDataset(root=root, preferences=preferences, images=torch.stack(loader.images), files=loader.files,
                          prompts=per_prompt, meta=meta, dropped_ties=dropped)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        rows.append((number, json_object(line, f"{path}, line {number}", "each line is one JSON object")))
    if not rows:
        raise UserError(f"{path} is empty; it needs one JSON object per line")
    return rows


def json_object(text: str, where: str, hint: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or a UserError saying ``where`` and ``hint``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg}); {hint}") from None
    if not isinstance(value, dict):
        raise UserError(f"{where}: must be a JSON object, got {type(value).__name__}; {hint}")
    return value


def _field(row: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, number: int) -> Any:
    if key not in row:
        raise UserError(f"{path}, line {number}: missing key {key!r} (has {sorted(row)})")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{path}, line {number}: {key!r} must be a {getattr(kind, '__name__', 'number')}, got {value!r}")
    return value


class _ImageTable:
    """Images read once each, all of one shape, as uint8 (3, H, W)."""

    def __init__(self, root: Path, source: Path) -> None:
        self.root, self.source = root, source
        self.rows: dict[str, int] = {}
        self.images: list[torch.Tensor] = []
        self.files: list[str] = []

    def row(self, name: str, number: int) -> int:
        if name in self.rows:
            return self.rows[name]
        from PIL import Image

        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise UserError(f"{self.source}, line {number}: image {name!r} is outside the dataset folder {self.root}")
        if not path.is_file():
            raise UserError(f"{self.source}, line {number}: image file {path} does not exist")
        try:
            with Image.open(path) as image:
                array = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
                width, height = image.size
        except OSError as exc:
            raise UserError(f"{self.source}, line {number}: cannot read image {path}: {exc}") from None
        tensor = array.view(height, width, 3).permute(2, 0, 1).contiguous()  # (3, H, W)
        if self.images and tensor.shape != self.images[0].shape:
            h0, w0 = self.images[0].shape[1:]
            raise UserError(
                f"{self.source}, line {number}: image {name} is {width}x{height} but {self.files[0]} is {w0}x{h0}; "
                "all images of a dataset must have one size (resize them to the generator's output size)"
            )
        self.rows[name] = len(self.images)
        self.images.append(tensor)
        self.files.append(name)
        return self.rows[name]


def _scores(rows: list[tuple[int, dict[str, Any]]], path: Path, table: _ImageTable,
            higher_is_better: bool) -> dict[str, PromptImages]:
    grouped: dict[str, tuple[list[int], list[float]]] = {}
    for number, row in rows:
        prompt = _field(row, "prompt", str, path, number)
        image = _field(row, "image", str, path, number)
        score = float(_field(row, "score", (int, float), path, number))
        if not math.isfinite(score):
            raise UserError(f"{path}, line {number}: score {score} is not finite")
        index, scores = grouped.setdefault(prompt, ([], []))
        index.append(table.row(image, number))
        scores.append(score if higher_is_better else -score)
    return {p: PromptImages(torch.tensor(i), torch.tensor(s, dtype=torch.float64)) for p, (i, s) in grouped.items()}


def _pairs(rows: list[tuple[int, dict[str, Any]]], path: Path, table: _ImageTable) -> tuple[dict[str, PromptImages], int]:
    wins: dict[str, dict[int, list[float]]] = {}  # prompt -> image row -> [won, decided pairs]
    ties = 0
    for number, row in rows:
        if "caption" in row and "prompt" in row and row["caption"] != row["prompt"]:
            raise UserError(f"{path}, line {number}: 'caption' and 'prompt' differ; give one of them")
        prompt = _field(row, "caption" if "caption" in row else "prompt", str, path, number)
        images = [_field(row, f"image_{i}", str, path, number) for i in (0, 1)]
        label = _field(row, "label_0", (int, float), path, number)
        if label not in (0, 0.5, 1):
            raise UserError(f"{path}, line {number}: label_0 must be 1 (image_0 preferred), 0 (image_1 preferred) "
                            f"or 0.5 (a tie), as in Pick-a-Pic; got {label!r}")
        if "label_1" in row and row["label_1"] != 1 - label:
            raise UserError(f"{path}, line {number}: label_1 = {row['label_1']!r} but label_0 = {label}; label_1 must be 1 - label_0")
        if images[0] == images[1]:
            raise UserError(f"{path}, line {number}: image_0 and image_1 are the same file {images[0]}")
        rows_ = [table.row(name, number) for name in images]
        if label == 0.5:
            ties += 1
            continue
        table_ = wins.setdefault(prompt, {})
        for i, r in enumerate(rows_):
            won = label if i == 0 else 1 - label
            record = table_.setdefault(r, [0.0, 0.0])
            record[0] += won
            record[1] += 1
    per_prompt = {
        prompt: PromptImages(torch.tensor(list(images)), torch.tensor([w / n for w, n in images.values()], dtype=torch.float64))
        for prompt, images in wins.items()
    }
    return per_prompt, ties


# ---- writing (make-dataset) ---------------------------------------------------------------------


def write_image(path: Path, image: torch.Tensor) -> None:
    """(3, H, W) float in [0, 1] -> PNG."""
    from PIL import Image

    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def pairs_from_scores(prompt: str, files: list[str], scores: list[float], rng: torch.Generator) -> list[dict[str, Any]]:
    """Pick-a-Pic-style pairs from one prompt's scored images: a random perfect matching (an odd
    image out), ``label_0`` from the scores (0.5 on equal scores)."""
    perm = torch.randperm(len(files), generator=rng).tolist()
    out = []
    for a, b in zip(perm[0::2], perm[1::2]):
        label = 1.0 if scores[a] > scores[b] else 0.0 if scores[a] < scores[b] else 0.5
        out.append({"caption": prompt, "image_0": files[a], "image_1": files[b], "label_0": label, "label_1": 1 - label})
    return out


# ---- the dataset side of an offline method ---------------------------------------------------------


class OfflineMethod:
    """Mixin for methods that train from an offline dataset (before ``Method`` in the bases)."""

    offline = True
    path_args = ("dataset",)

    @classmethod
    def preflight(cls, config: Any) -> None:
        check_present(config, getattr(cls, "registry_name", cls.__name__))


class OfflineSource:
    """A cell's dataset: loaded once, checked against the training reward and the generator's
    images, and the rows of each prompt's positives and negatives."""

    def __init__(self, config: OfflineDataConfig, n_pos: int, n_neg: int, who: str, reward: Any = None) -> None:
        self.who, self.n_pos, self.n_neg = who, n_pos, n_neg
        self.data = load_dataset(config.dataset, config.preferences)
        self.data.check_counts(n_pos, n_neg, who)
        scored_by = (self.data.meta.get("reward") or {}).get("name")
        if scored_by and reward is not None:
            from drpo_bench.registry import REWARDS

            if scored_by not in REWARDS or REWARDS.get(scored_by).cls is not type(reward):
                raise UserError(
                    f"{who}: {self.data.root} was scored by reward {scored_by!r} (its {META_FILE}), but this cell's training "
                    f"reward is {getattr(reward, 'registry_name', type(reward).__name__)!r}. Set the method row's "
                    "`reward:` to the suite's alias for the reward that scored the data, so results say what ranked it."
                )

    def anchors(self, prompts: list[str], generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of each prompt's positives (P, n_pos) and negatives (P, n_neg); ``generated``
        (P*K, 3, H, W) are the generator's images, whose size the dataset's must match."""
        if tuple(generated.shape[1:]) != self.data.image_shape:
            raise UserError(
                f"{self.who}: the dataset {self.data.root} has images of shape {self.data.image_shape}, the generator "
                f"makes {tuple(generated.shape[1:])}; make the dataset with this generator (or resize its images)."
            )
        return self.data.select(prompts, self.n_pos, self.n_neg)

    def pixels(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(P, n) rows -> (P*n, 3, H, W) float images in [0, 1] on ``device``, prompt-major."""
        return self.data.pixels(rows.flatten()).to(device)

    def score_gap(self, prompts: list[str]) -> float:
        return self.data.score_gap(prompts, self.n_pos, self.n_neg)
