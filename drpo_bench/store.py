"""Results on disk: atomic writes (temp file, then rename) and the cell folder's typed records.

``CellFolder`` owns a cell folder's layout (file names, read, write); ``CellRecord``,
``EvalRecord`` and ``MetricRecord`` are what ``cell.json`` and ``eval.json`` hold. The runner
writes with them and the report reads with them; a file that does not parse is a
``CorruptCellError`` naming the file and how to recover.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drpo_bench.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared files like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode())


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    _atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(Path(path), buf.getvalue())


# ---- the cell folder: typed records, file names, read and write ---------------------------------



class _Record(BaseModel):
    # unknown keys are kept (a newer drpo-bench may add fields); known ones are type-checked
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class MetricRecord(_Record):
    mean: float | None  # None when the metric could not be computed (see ``error``)
    higher_is_better: bool
    per_task: dict[str, float] | None = None
    definition: dict[str, Any] = Field(default_factory=dict)  # model, version, formula, scale
    error: str | None = None


class EvalRecord(_Record):
    n_prompts: int
    images_per_prompt: int
    split: str
    metrics: dict[str, MetricRecord]


class CellRecord(_Record):
    """cell.json: written last; its presence with status "complete" means the cell is done."""

    status: str
    cell_id: str
    fingerprint: str
    suite: str
    generator: dict[str, Any]  # ComponentSpec
    method: dict[str, Any]  # MethodSpec
    method_paper: str = ""
    trains: bool
    needs_differentiable_reward: bool = False
    train_reward: dict[str, Any] | None = None  # {"alias": ..., "name": ..., "args": ...}, secrets redacted
    train_reward_identity: dict[str, Any] | None = None  # a served reward's /info identity (name, config, weights)
    seed: int
    budget: dict[str, Any] | None = None  # resolved budget (+ effective_batch)
    train: dict[str, Any] | None = None  # resolved training settings
    eval: dict[str, Any]
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)  # what the method changed
    budget_matched: bool = True
    higher_is_better: dict[str, bool] = Field(default_factory=dict)
    metric_definitions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    checksums: dict[str, str] = Field(default_factory=dict)  # sha256 of the cell's files, verified on skip
    resumed_from_step: int | None = None
    wall_seconds_this_run: float = 0.0
    # of those, the seconds spent in held-out evaluations (periodic and final; a shared step-0 one counts in
    # the cell that computed it); None in cells written before it was recorded
    eval_seconds_this_run: float | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    git: str | None = None
    hardware: dict[str, Any] = Field(default_factory=dict)
    execution: dict[str, Any] = Field(default_factory=dict)  # executor, jobs, torch_threads, device (executors.py)
    # the code that made the cell (drpo_bench.suite.code_hash): hash, per-file digests, commit, dirty, uncommitted files;
    # None in cells written before it was recorded (a rerun treats them as made by other code)
    code: dict[str, Any] | None = None

    @property
    def generator_label(self) -> str:
        return self.generator.get("id") or self.generator["name"]

    @property
    def method_id(self) -> str:
        return self.method["id"]

    @property
    def method_name(self) -> str:
        return self.method["method"]

    @property
    def reward_alias(self) -> str | None:
        return (self.train_reward or {}).get("alias")

    @property
    def effective_batch(self) -> int | None:
        return (self.budget or {}).get("effective_batch")


class CellFolder:
    """One cell's folder under a run's output: the only place that knows its file names."""

    CELL = "cell.json"
    EVAL = "eval.json"
    LEDGER = "ledger.json"
    TRAIN_LOG = "train.jsonl"
    ADAPTER = "adapter.safetensors"
    SAMPLES = "samples.png"
    ERROR = "error.txt"
    CHECKPOINT = "checkpoint.json"
    SCORES = "scores.jsonl"  # per eval image: prompt index, prompt, task and every per-image metric
    EVAL_HISTORY = "eval_history.jsonl"  # {"step", "seconds", "flops", <metric>: mean} per periodic eval (eval.every)
    EVAL_IMAGES = "eval_images"  # every eval image as <prompt index>-<image>.png (eval.keep_images)
    KEPT_STALE = "kept_stale.json"  # run --keep-stale kept this cell though other code made it (the report marks it)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # -- reading (every read names the file when it is corrupt) --
    def _read(self, name: str, model: type[BaseModel]) -> Any:
        path = self.file(name)
        try:
            return model.model_validate(read_json(path))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise CorruptCellError(path, f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def read_kept_stale(self) -> dict[str, Any] | None:
        """What run --keep-stale recorded about a cell made by other code; None when it is not marked."""
        path = self.file(self.KEPT_STALE)
        try:
            data = read_json(path) if path.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCellError(path, str(exc)) from None
        return data if isinstance(data, dict) else None

    def read_cell(self) -> CellRecord | None:
        return self._read(self.CELL, CellRecord) if self.file(self.CELL).exists() else None

    def is_complete(self) -> bool:
        record = self.read_cell()
        return record is not None and record.status == "complete"

    def read_eval(self) -> EvalRecord:
        return self._read(self.EVAL, EvalRecord)

    def read_ledger_summary(self) -> dict[str, Any]:
        if not self.file(self.LEDGER).exists():
            return {}
        try:
            data = read_json(self.file(self.LEDGER))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCellError(self.file(self.LEDGER), str(exc)) from None
        if not isinstance(data, dict) or not isinstance(data.get("summary", {}), dict):
            raise CorruptCellError(self.file(self.LEDGER), "no summary mapping")
        return data.get("summary", {})

    def read_scores(self) -> list[dict[str, Any]]:
        """Per-image scores (``scores.jsonl``): [] for cells written before they were kept."""
        return self._read_jsonl(self.SCORES)

    def read_eval_history(self) -> list[dict[str, Any]]:
        """Periodic held-out evaluations sorted by step: [] when the cell ran none (eval.every unset)."""
        rows = self._read_jsonl(self.EVAL_HISTORY)
        return sorted((r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)), key=lambda r: r["step"])

    def read_train_log(self) -> list[dict[str, Any]]:
        return self._read_jsonl(self.TRAIN_LOG)

    def _read_jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorruptCellError(path, f"line {number}: {exc}") from None
        return rows

    # -- integrity --
    #: files whose checksums cell.json records (those that exist when it is written)
    CHECKED = (EVAL, LEDGER, TRAIN_LOG, ADAPTER, SAMPLES, SCORES, EVAL_HISTORY)

    def checksums(self) -> dict[str, str]:
        return {name: sha256_file(self.file(name)) for name in self.CHECKED if self.file(name).exists()}

    def verify(self, record: CellRecord) -> None:
        """A finished cell's files are the ones its cell.json recorded (and they parse): else corrupt."""
        for name, expected in record.checksums.items():
            path = self.file(name)
            if not path.exists():
                raise CorruptCellError(path, "missing, though the finished cell recorded it")
            if sha256_file(path) != expected:
                raise CorruptCellError(path, "its checksum differs from the one recorded in cell.json")
        for name in self.CHECKED:  # a run file cell.json does not vouch for was added or swapped in since
            if name not in record.checksums and self.file(name).exists():
                raise CorruptCellError(self.file(name), "cell.json records no checksum for it")
        self.read_eval()

    def remove_leftovers(self) -> None:
        """Temp files of interrupted atomic writes (``.name.XXXX.tmp``)."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # -- writing (atomic) --
    def write_cell(self, record: CellRecord) -> None:
        write_json(self.file(self.CELL), record.model_dump(mode="json"))

    def write_eval(self, record: EvalRecord) -> None:
        write_json(self.file(self.EVAL), record.model_dump(mode="json"))

    def write_ledger(self, ledger_json: dict[str, Any]) -> None:
        write_json(self.file(self.LEDGER), ledger_json)

    def append_eval_history(self, row: dict[str, Any]) -> None:
        """Add one periodic evaluation (atomic rewrite: the file is small and never half-written)."""
        rows = [r for r in self.read_eval_history() if r["step"] != row["step"]] + [row]
        write_text(self.file(self.EVAL_HISTORY), "".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"])))

    def truncate_eval_history(self, keep_steps: int) -> None:
        """On resume from step ``keep_steps``: drop evaluations a killed run made after that checkpoint."""
        if self.file(self.EVAL_HISTORY).exists():
            rows = [r for r in self.read_eval_history() if r["step"] <= keep_steps]
            write_text(self.file(self.EVAL_HISTORY), "".join(json.dumps(r) + "\n" for r in rows))

    def write_eval_images(self, images: torch.Tensor, groups: list[int], per_prompt: int) -> None:
        """(N, 3, H, W) in [0, 1] -> eval_images/<prompt index>-<j>.png, j the image's index within its prompt."""
        import io

        from PIL import Image

        folder = self.file(self.EVAL_IMAGES)
        folder.mkdir(exist_ok=True)
        arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
        for i, (array, group) in enumerate(zip(arrays, groups)):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            _atomic_write_bytes(folder / f"{group:05d}-{i % per_prompt:03d}.png", buf.getvalue())

    def write_scores(self, rows: list[dict[str, Any]]) -> None:
        write_text(self.file(self.SCORES), "".join(json.dumps(row) + "\n" for row in rows))


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CorruptCellError(UserError):
    """A run file that cannot be read back: names the file and how to recover."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is corrupt ({detail}). Delete the cell folder {path.parent} to rerun that cell "
            "(`drpo-bench run` redoes only missing cells)."
        )
