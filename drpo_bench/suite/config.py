"""Suite schema: typed, strict, and errors that name the file, the line, the field and a fix.

A suite file (YAML) says what to compare::

    name: quickstart
    generators: [shapes]
    rewards: {clip: {name: shapes-clip}, checker: shapes-checker}
    prompts: shapes
    train_rewards: [clip]
    methods:
      - {id: base, method: base}
      - {id: drpo, method: drpo, args: {n_pos: 4, n_neg: 4}}
      - {id: drpo-checker, method: drpo, reward: checker, args: {n_pos: 4, n_neg: 4}}
      - {id: draft, method: draft, train: {lr: 1.0e-3}}   # a method's own settings
    seeds: [0, 1, 2]
    budget: {steps: 40, candidates_per_prompt: 16, prompts_per_update: 8}
    eval: {images_per_prompt: 4, metrics: [checker, clip, diversity]}

``load_suite(path, overrides)`` parses, applies dotted overrides (``budget.steps=10``),
validates the schema and then every registry name and component config, without building
anything (no weights are loaded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from drpo_bench.errors import ConfigError, UserError, nearest
from drpo_bench.registry import Seed, StrictConfig
from drpo_bench.suite.yaml_strict import load_yaml, safe_name


#: an AdamW beta: torch.optim.AdamW refuses one outside [0, 1) when the optimizer is built, in training
Beta = Annotated[float, Field(ge=0, lt=1)]


class LoggingConfig(StrictConfig):
    """A suite's ``logging:`` section: which live sinks a training cell writes to (drpo_bench.run.train_logging)."""

    tensorboard: bool = False  # opt-in: needs the optional tensorboard package
    wandb: bool = False  # opt-in: needs the optional wandb package (and an account, or WANDB_MODE=offline)
    wandb_project: str = "drpo-bench"  # W&B project the cells' runs go to
    every: int = Field(10, ge=1)  # a stderr line every N updates (TensorBoard and W&B get every update)
    lines: Literal["auto", "on", "off"] = "auto"  # stderr lines: auto = only when stderr is not a terminal

    @field_validator("lines", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a boolean: take it as the word it was."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class _Strict(BaseModel):
    # no inf / nan: a learning rate or loss scale of inf validates as "> 0" and fails only in training
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)


class ComponentSpec(_Strict):
    """A registered component and its arguments. A bare string in YAML means ``{name: ...}``."""

    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # label in cell ids and reports; defaults to name

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        return self.id or self.name.replace(":", ".")


class TrainConfig(_Strict):
    """The shared training loop's settings: identical for every method unless overridden."""

    lr: float = Field(1e-4, gt=0)  # the paper's SD-Turbo LoRA learning rate
    # "constant": the published code's constant_with_warmup (0 warmup); "cosine": decay to 0 over
    # budget.steps, so a short run ends on an average of its last updates rather than on the last one
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(1e-2, ge=0)  # AdamW decay of the published code
    betas: tuple[Beta, Beta] = (0.9, 0.999)  # AdamW defaults
    grad_clip: float | None = Field(1.0, gt=0)  # published clip norm; null disables
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # CPU-safe default; paper: fp16 (SD-Turbo), bf16 (SDXL)
    # fp16's dynamic loss scale starts here (torch's and accelerate's default 2^16) and halves on each
    # overflowing update, which the scaler skips
    fp16_init_scale: float = Field(65536.0, gt=0)
    checkpoint_every: int = Field(10, ge=1)  # optimizer updates between resumable checkpoints
    count_flops: bool = True  # count FLOPs per phase during the first update (left out of timing means)


class TrainOverrides(_Strict):
    """Per-method overrides of TrainConfig, where a method's public runs differ (e.g. its own
    learning rate or precision). Unset fields take the suite's ``train:`` value."""

    lr: float | None = Field(None, gt=0)
    lr_schedule: Literal["constant", "cosine"] | None = None
    weight_decay: float | None = Field(None, ge=0)
    betas: tuple[Beta, Beta] | None = None
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] | None = None


class BudgetOverrides(_Strict):
    """Per-method overrides of the budget. Any of steps, K or prompts per update breaks the matched
    budget: the cell records it and the report flags the row "budget not matched"."""

    steps: int | None = Field(None, gt=0)
    candidates_per_prompt: int | None = Field(None, ge=2)
    prompts_per_update: int | None = Field(None, ge=1)
    micro_batch_prompts: int | None = Field(None, ge=1)  # memory only: does not change the budget


class BudgetConfig(_Strict):
    """Matched budget: every method sees the same candidates per optimizer update."""

    steps: int = Field(gt=0)  # optimizer updates per cell
    candidates_per_prompt: int = Field(24, ge=2)  # K; the paper's SD-Turbo value
    prompts_per_update: int = Field(8, ge=1)  # prompts per optimizer update (the paper: 8)
    micro_batch_prompts: int | None = Field(None, ge=1)  # prompts per forward; None = all at once
    effective_batch: int | None = Field(None, ge=1)  # optional check: must equal K * prompts_per_update

    @model_validator(mode="after")
    def _consistent(self) -> BudgetConfig:
        micro = self.micro_batch_prompts or self.prompts_per_update
        if self.prompts_per_update % micro:
            raise ValueError(
                f"prompts_per_update ({self.prompts_per_update}) must be a multiple of "
                f"micro_batch_prompts ({micro})"
            )
        expected = self.candidates_per_prompt * self.prompts_per_update
        if self.effective_batch is not None and self.effective_batch != expected:
            raise ValueError(
                f"effective_batch {self.effective_batch} != candidates_per_prompt * prompts_per_update = {expected}; "
                "change one of them or drop effective_batch"
            )
        return self

    @property
    def micro(self) -> int:
        return self.micro_batch_prompts or self.prompts_per_update

    @property
    def effective(self) -> int:
        return self.candidates_per_prompt * self.prompts_per_update


class EvalConfig(_Strict):
    split: str = "eval"  # held-out prompts: never seen in training
    max_prompts: int | None = Field(None, ge=1)  # cap for quick runs; None = the whole split
    images_per_prompt: int = Field(4, ge=1)  # enough for diversity and per-prompt variance
    metrics: list[ComponentSpec] = Field(min_length=1)  # reward aliases or registered metrics
    batch_size: int = Field(64, ge=1)  # images per generator forward at eval time
    seed: Seed = 1234  # eval noise seed (plus the cell seed): every method sees the same noise
    grid_prompts: int = Field(8, ge=0)  # prompts shown in samples.png
    every: int | None = Field(None, ge=1)  # held-out eval every N updates (eval_history.jsonl); None = at the end only
    every_max_prompts: int | None = Field(None, ge=1)  # prompts of those periodic evals (cheaper); None = max_prompts
    keep_images: bool = False  # write every eval image to eval_images/ (PNG), e.g. for FID against other tools


class ExecutionConfig(_Strict):
    """How the cells are run (``drpo_bench/run/executors.py``); never part of a cell's fingerprint: the
    results do not depend on it, up to float rounding from the number of CPU threads per cell.
    The run command's --jobs, --threads-per-cell, --executor and --address override it."""

    executor: Literal["local", "ray"] = "local"  # local: processes on this machine; ray: tasks on a Ray cluster
    # cells at once; auto = min(cells, GPUs when the generator runs on CUDA, else CPU cores); None =
    # 1 locally (one after another in the run's own process, no pool), as many as fit on Ray
    jobs: int | Literal["auto"] | None = None
    threads_per_cell: int | None = Field(None, ge=1, lt=2**31)  # torch CPU threads per cell; None = cores // jobs (at least 1)
    gpus_per_cell: float | None = Field(None, ge=0)  # ray: GPUs a cell asks for; None = 1 on CUDA generators, else 0
    address: str | None = None  # ray: an existing cluster ("auto", "ray://head:10001"); None starts a local one

    @field_validator("jobs")
    @classmethod
    def _positive_jobs(cls, jobs: int | str | None) -> int | str | None:
        if isinstance(jobs, int) and jobs < 1:
            raise ValueError(f"jobs must be at least 1 or `auto`, got {jobs}")
        return jobs


class TuneConfig(_Strict):
    """A method's tuning grid (``drpo-bench tune``, docs/tuning.md): every combination trains at one
    seed on the train prompts less the validation split and is scored on the validation split; the
    best by ``metric`` is what ``run`` then uses for every seed."""

    # "train.<field>" (a TrainOverrides field, e.g. train.lr) or "args.<name>" (the method's own
    # argument, e.g. args.beta) -> the values tried; every combination is one configuration
    grid: dict[str, list[Any]] = Field(min_length=1)
    metric: str = Field(min_length=1)  # an eval metric label (e.g. checker): the validation score that chooses
    seed: Seed = 0  # the tuning seed when `seeds` is not given
    # every configuration trains at each of these seeds and is scored by the mean over them; the
    # record says whether the same configuration wins at each (docs/tuning.md); None = [seed]
    seeds: list[Seed] | None = Field(None, min_length=1)
    steps: int | None = Field(None, gt=0)  # a shorter budget for the grid; None = the method's budget.steps
    max_prompts: int | None = Field(None, ge=1)  # validation prompts scored; None = the whole split
    images_per_prompt: int | None = Field(None, ge=1)  # None = the suite's eval.images_per_prompt

    @property
    def tuning_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"tune.seeds repeats a seed: {seeds}")
        return seeds

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        import re

        for key, values in grid.items():
            if not re.fullmatch(r"(train|args)\.[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"grid key `{key}` must be train.<setting> (e.g. train.lr) or args.<argument> (e.g. args.beta)")
            if not values:
                raise ValueError(f"grid `{key}` lists no values; give at least one, e.g. [1.0e-3, 5.0e-3]")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"grid `{key}` repeats a value: {values}")
        return grid


class MethodSpec(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # row label, part of cell ids
    method: str = Field(min_length=1)  # registered method name, or package.module:Class
    args: dict[str, Any] = Field(default_factory=dict)
    reward: str | None = None  # train on this reward alias instead of every train_rewards entry
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    budget: BudgetOverrides = Field(default_factory=BudgetOverrides)
    tune: TuneConfig | None = None  # a tuning grid; `run` applies its record (drpo_bench/commands/tune.py)
    tuned_from: str | None = None  # a tuning record (JSON) whose chosen setting this method runs with

    @model_serializer(mode="wrap")
    def _drop_unset_tuning(self, handler: Any) -> Any:
        """Untuned methods dump as before tuning existed: their cells' fingerprints do not change."""
        data = handler(self)
        if isinstance(data, dict):
            for key in ("tune", "tuned_from"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data

    def record(self) -> dict[str, Any]:
        """This row as results record it (cell.json, suite.json, the live log's config). The loader
        made its file paths (``tuned_from``, the method's ``path_args``) absolute; here those under
        the working directory are shown relative to it, so results written in a checkout name no
        machine path. Fingerprints do not use this (``Method.identity_args``)."""
        from drpo_bench.registry import METHODS

        data = self.model_dump(mode="json")
        if self.tuned_from:
            data["tuned_from"] = shown_path(self.tuned_from)
        if self.method in METHODS:
            for name in METHODS.get(self.method).cls.path_args:
                if isinstance(data["args"].get(name), str):
                    data["args"][name] = shown_path(data["args"][name])
        return data


def shown_path(value: str) -> str:
    """A path as results show it: relative to the working directory when it lies under it."""
    try:
        return str(Path(value).relative_to(Path.cwd()))
    except ValueError:  # relative already, or elsewhere on the machine: as given
        return value


class PaperValues(_Strict):
    """A paper's published numbers for a suite's rows, printed by the report beside the measured ones."""

    source: str = Field(min_length=1)  # the paper (authors, title, arXiv id) the numbers come from
    table: str = Field(min_length=1)  # which table, prompt set and units, e.g. "Table 1, Pick-a-Pic v2 test"
    # method id -> {eval metric (reward alias) -> published value, in the units the report prints}; ids that
    # are not rows of a run (a `methods=[...]` override) are left out of its report
    values: dict[str, dict[str, float]] = Field(min_length=1)
    note: str = ""  # how the suite's rows map onto the paper's (e.g. which of two DrPO rows it compares)


class Suite(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = ""
    generators: list[ComponentSpec] = Field(min_length=1)
    rewards: dict[str, ComponentSpec] = Field(default_factory=dict)  # alias -> reward
    prompts: ComponentSpec
    train_rewards: list[str] = Field(default_factory=list)  # aliases crossed with training methods
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)  # each a registry.Seed: in the range torch and numpy accept
    budget: BudgetConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig
    output: str = ""  # where the run writes; default runs/<name>
    logging: LoggingConfig = Field(default_factory=LoggingConfig)  # live training logs: TensorBoard, W&B, stderr lines
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)  # cells at once, threads, Ray; not in fingerprints
    paper: PaperValues | None = None  # the paper's published numbers for these rows (report only; not in fingerprints)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _unique_ids(self) -> Suite:
        for what, ids in (("method id", [m.id for m in self.methods]), ("generator id", [g.label for g in self.generators])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {what}s {dupes}: give each a distinct `id`")
        return self

    def record(self) -> dict[str, Any]:
        """The suite as results record it (suite.json): each method row as ``MethodSpec.record`` shows it."""
        return {**self.model_dump(mode="json"), "methods": [m.record() for m in self.methods]}

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.name}")

    def budget_for(self, method: MethodSpec) -> BudgetConfig:
        """The suite's budget with the method's overrides applied (validated as a whole)."""
        changes = method.budget.model_dump(exclude_none=True)
        if "prompts_per_update" in changes and "micro_batch_prompts" not in changes:
            changes["micro_batch_prompts"] = self.budget.micro_batch_prompts  # re-checked against the new count
        merged = {**self.budget.model_dump(), **changes}
        if changes:
            merged["effective_batch"] = None  # the suite's check is about its own K x prompts
        return BudgetConfig.model_validate(merged)

    def train_for(self, method: MethodSpec) -> TrainConfig:
        """The suite's training settings with the method's overrides applied."""
        return TrainConfig.model_validate({**self.train.model_dump(), **method.train.model_dump(exclude_none=True)})

    def method_overrides(self, method: MethodSpec) -> dict[str, dict[str, Any]]:
        """What a method changes from the suite's settings: {"train": {...}, "budget": {...}}."""
        return {what: changes for what, changes in (
            ("train", method.train.model_dump(exclude_none=True)),
            ("budget", method.budget.model_dump(exclude_none=True)),
        ) if changes}

    def budget_matched(self, method: MethodSpec) -> bool:
        """False when the method sees another number of updates, candidates or prompts per update."""
        mine, suite = self.budget_for(method), self.budget
        return (mine.steps, mine.candidates_per_prompt, mine.prompts_per_update) == (
            suite.steps, suite.candidates_per_prompt, suite.prompts_per_update)


# ---- loading -------------------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in a composed YAML tree to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            sub = _line_index(value_node, (*path, key))
            sub[(*path, key)] = key_node.start_mark.line + 1  # the key's line, not its value's
            lines.update(sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _keyless_line_before(text: str, line: int) -> int | None:
    """The 0-based index of the non-blank, non-comment line before ``line`` when it has no ':' and is
    not a list item or a continued flow collection (a key whose ':' was forgotten), else None."""
    lines = text.splitlines()
    for i in range(min(line, len(lines)) - 1, -1, -1):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if ":" in stripped or stripped.startswith(("-", "[", "{", "]", "}")) or stripped.endswith((",", "[", "{")):
            return None
        return i
    return None


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names of the (sub)model at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return sorted(fields) if fields else []
        annotation = fields[part].annotation
        current = _model_in(annotation)
    return sorted(getattr(current, "model_fields", {}) or {})


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class SuiteLoader:
    """Parses a suite file into a ``Suite`` with located, actionable errors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines: dict[tuple[Any, ...], int] = {}
        self.overrides: dict[tuple[Any, ...], str] = {}  # dotted path -> the command-line `key=value` that set it

    def override_for(self, loc: tuple[Any, ...]) -> str | None:
        """The command-line override that set ``loc`` or a field above it (the longest such path)."""
        loc = tuple(loc)
        while loc:
            if loc in self.overrides:
                return self.overrides[loc]
            loc = loc[:-1]
        return None

    def _where(self, loc: tuple[Any, ...]) -> str:
        """``the command-line override `k=v``` when one set ``loc``, else ``<file>, line N``."""
        item = self.override_for(loc)
        if item is not None:
            return f"command-line override `{item}` (suite {self.path})"
        line = _line_for(self.lines, loc)
        return f"{self.path}" + (f", line {line}" if line else "")

    def error(self, loc: tuple[Any, ...], message: str) -> ConfigError:
        return ConfigError(f"{self._where(loc)}, field `{_format_loc(loc)}`: {message}")

    def read(self) -> dict[str, Any]:
        if self.path.is_dir():
            files = sorted(str(f) for f in self.path.glob("*.yaml"))
            raise ConfigError(f"{self.path} is a folder, not a suite file; name its suite files"
                              + (f", e.g. `{files[0]}` (all: `{self.path}/*.yaml`)" if files else "")
                              + ". List suites with `drpo-bench ls suites`.")
        if not self.path.exists():
            hint = ""
            if self.path.parent.exists():
                others = [p.name for p in self.path.parent.glob("*.yaml")]
                if others:
                    hint = f" Nearest files there: {', '.join(nearest(self.path.name, others))}."
            raise ConfigError(f"suite file {self.path} does not exist.{hint} List suites with `drpo-bench ls suites`.")
        text = self.path.read_text()
        try:
            # strict and bounded: duplicate keys refused, aliases expanded within limits (yaml_strict)
            raw, node = load_yaml(text, str(self.path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            context = getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if mark and context and context.line < mark.line:
                # PyYAML notices some errors on the next line (a key without its ':'): the mistake is
                # where the construct began, so that line leads; where it was noticed follows
                where = f", line {context.line + 1}, column {context.column + 1}"
                problem = (f"{getattr(exc, 'context', None) or 'here'}: {problem} (noticed at line {mark.line + 1}, "
                           f"column {mark.column + 1})")
            elif mark and problem.startswith("mapping values are not allowed") and (
                    keyless := _keyless_line_before(text, mark.line)) is not None:
                # `steps 3` then `candidates_per_prompt: 4`: PyYAML reads both as one key and stops on the
                # second line's ':'; the line without its ':' is the mistake
                where = f", line {keyless + 1}"
                problem = (f"a key without its ':' (PyYAML: {problem} at line {mark.line + 1}, "
                           f"column {mark.column + 1})")
            else:
                where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{self.path}{where}: YAML syntax error: {problem}. Check indentation and quoting there.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: a suite must be a YAML mapping (name:, generators:, methods:, ...), got {type(raw).__name__}")
        self.lines = _line_index(node) if node is not None else {}
        return raw

    def load(self, overrides: list[str] | None = None) -> Suite:
        raw = self.read()
        for item in overrides or []:
            apply_override(raw, item)
            path = tuple(int(p) if p.isdigit() else p for p in item.partition("=")[0].split("."))
            self.overrides[path] = item
        self._check_finite(raw)
        self._resolve_paths(raw)
        try:
            suite = Suite.model_validate(raw)
        except ValidationError as exc:
            raise self._from_validation(exc) from None
        check_references(suite, self)
        return suite

    def _resolve_paths(self, raw: dict[str, Any]) -> None:
        """A method's path arguments (its class's ``path_args``, e.g. an offline ``dataset``), when
        relative, are relative to this suite file's directory, and so is a ``tuned_from`` record:
        made absolute here (``MethodSpec.record`` shows them relative to the working directory)."""
        from drpo_bench.registry import METHODS

        def resolve(value: Any) -> Any:
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                return str((self.path.parent / value).resolve())
            return value

        for spec in raw.get("methods") or []:
            if isinstance(spec, dict) and "tuned_from" in spec:  # a tuning record: relative to the suite too
                spec["tuned_from"] = resolve(spec["tuned_from"])
            if not (isinstance(spec, dict) and isinstance(spec.get("method"), str) and isinstance(spec.get("args"), dict)):
                continue  # the schema check reports it
            if spec["method"] not in METHODS:
                continue
            for name in METHODS.get(spec["method"]).cls.path_args:
                if name in spec["args"]:
                    spec["args"][name] = resolve(spec["args"][name])

    def _check_finite(self, value: Any, loc: tuple[Any, ...] = ()) -> None:
        """NaN or infinity anywhere (a learning rate, a method argument) would train garbage: refuse it."""
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(loc, f"{value} is not a finite number; use a finite value")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            self._check_finite(item, (*loc, key))

    def _from_validation(self, exc: ValidationError, prefix: tuple[Any, ...] = (), model: type[BaseModel] = Suite) -> ConfigError:
        messages = []
        first_loc: tuple[Any, ...] = prefix
        # unknown keys first: a misspelled key also shows up as a missing one
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        for i, err in enumerate(errors):
            loc = (*prefix, *err["loc"])
            if i == 0:
                first_loc = loc
            if err["type"] == "extra_forbidden":
                valid = _fields_at(model, tuple(err["loc"][:-1]))
                msg = f"unknown key `{loc[-1]}`" + (f"; nearest valid keys: {', '.join(nearest(str(loc[-1]), valid))}" if valid else "")
            elif err["type"] == "missing":
                msg = f"required key `{loc[-1]}` is missing"
            else:
                value = err.get("input")
                msg = err["msg"].removeprefix("Value error, ")
                if not isinstance(value, (dict, list)):
                    msg += f" (got {value!r})"
            line = _line_for(self.lines, loc)
            item = self.override_for(loc)
            origin = f" (override `{item}`)" if item is not None else (f" (line {line})" if line else "")
            messages.append(f"`{_format_loc(loc)}`{origin}: {msg}")
        where = self._where(first_loc)
        shown = messages[1:4]
        more = (f" ({len(messages) - 1} more" + (f", first {len(shown)}" if len(shown) < len(messages) - 1 else "")
                + ": " + "; ".join(shown) + ")") if len(messages) > 1 else ""
        return ConfigError(f"{where}: invalid suite: {messages[0]}{more}. See `drpo-bench validate --help` for the schema.")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``budget.steps=10`` → raw['budget']['steps'] = 10 (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} must look like dotted.key=value, e.g. budget.steps=10")
    parts = key.split(".")
    target: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(target, list):
            try:
                target = target[int(part)]
            except (ValueError, IndexError):
                raise UserError(f"override {item!r}: `{'.'.join(parts[: i + 1])}` is not a valid list index") from None
            continue
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, (dict, list)):
            raise UserError(f"override {item!r}: `{'.'.join(parts[: i + 1])}` is a value, not a section")
        target = nxt
    last = parts[-1]
    try:
        parsed = load_yaml(value, f"override {item!r}")[0]
    except yaml.YAMLError:
        parsed = value
    if isinstance(target, list):
        try:
            target[int(last)] = parsed
        except (ValueError, IndexError):
            raise UserError(f"override {item!r}: `{last}` is not a valid list index") from None
    else:
        target[last] = parsed


def check_references(suite: Suite, loader: SuiteLoader) -> None:
    """Every registry name exists, every component config validates, pairings make sense."""
    from drpo_bench.registry import GENERATORS, METHODS, METRICS, PROMPTS, REWARDS

    def parse(registry: Any, spec: ComponentSpec, loc: tuple[Any, ...]) -> Any:
        try:
            entry = registry.get(spec.name)
        except UserError as exc:
            raise loader.error((*loc, "name") if loc[-1] != "name" else loc, str(exc)) from None
        try:
            entry.parse_config(spec.args)
        except ValidationError as exc:
            raise loader._from_validation(exc, (*loc, "args"), entry.config_model) from None
        return entry

    def safe(value: str, what: str, loc: tuple[Any, ...]) -> None:
        try:
            safe_name(value, what)
        except ConfigError as exc:
            raise loader.error(loc, str(exc)) from None

    safe(suite.name, "suite name", ("name",))
    for i, gen in enumerate(suite.generators):
        safe(gen.label, "generator id", ("generators", i, "id" if gen.id else "name"))
        parse(GENERATORS, gen, ("generators", i))
    for alias in suite.rewards:
        safe(alias, "reward alias", ("rewards", alias))
    for i, spec in enumerate(suite.methods):
        safe(spec.id, "method id", ("methods", i, "id"))
    reward_entries = {alias: parse(REWARDS, spec, ("rewards", alias)) for alias, spec in suite.rewards.items()}
    parse(PROMPTS, suite.prompts, ("prompts",))

    for i, alias in enumerate(suite.train_rewards):
        if alias not in suite.rewards:
            raise loader.error(("train_rewards", i), f"`{alias}` is not a reward alias defined under `rewards:`; defined: {', '.join(nearest(alias, suite.rewards)) or 'none'}")

    for i, spec in enumerate(suite.methods):
        try:
            entry = METHODS.get(spec.method)
        except UserError as exc:
            raise loader.error(("methods", i, "method"), str(exc)) from None
        try:
            entry.parse_config(spec.args)
        except ValidationError as exc:
            raise loader._from_validation(exc, ("methods", i, "args"), entry.config_model) from None
        cls = entry.cls
        try:
            budget = suite.budget_for(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise loader.error(("methods", i, "budget"), f"with this method's overrides the budget is invalid: "
                               f"{first['msg'].removeprefix('Value error, ')}") from None
        config = entry.parse_config(spec.args)
        check_nested(config, ("methods", i, "args"), loader)
        if getattr(cls, "trains", True):
            try:
                cls.check_budget(config, budget.candidates_per_prompt)
            except ValueError as exc:
                where = ("methods", i, "budget") if spec.budget.candidates_per_prompt else ("methods", i, "args")
                raise loader.error(where, f"{exc} (budget.candidates_per_prompt = {budget.candidates_per_prompt})") from None
        if not getattr(cls, "trains", True):
            if spec.train.model_dump(exclude_none=True) or spec.budget.model_dump(exclude_none=True) or spec.tune or spec.tuned_from:
                raise loader.error(("methods", i), f"method `{spec.method}` does not train; remove its `train:`/`budget:`/`tune:`/`tuned_from:`")
            if spec.reward:
                raise loader.error(("methods", i, "reward"), f"method `{spec.method}` does not train, so it takes no training reward; remove `reward:`")
            continue
        aliases = [spec.reward] if spec.reward else list(suite.train_rewards)
        if spec.reward and spec.reward not in suite.rewards:
            raise loader.error(("methods", i, "reward"), f"`{spec.reward}` is not a reward alias defined under `rewards:`; defined: {', '.join(nearest(spec.reward, suite.rewards)) or 'none'}")
        if not aliases:
            raise loader.error(("methods", i), f"method `{spec.id}` trains but has no reward: set `reward:` on it or list aliases under `train_rewards:`")
        if getattr(cls, "needs_differentiable_reward", False):
            for alias in aliases:
                reward_cls = reward_entries[alias].cls
                if not getattr(reward_cls, "differentiable", False):
                    loc = ("methods", i, "reward") if spec.reward else ("train_rewards", suite.train_rewards.index(alias))
                    diffable = [a for a, e in reward_entries.items() if getattr(e.cls, "differentiable", False)]
                    raise loader.error(
                        loc,
                        f"method `{spec.id}` ({spec.method}) backpropagates through the reward, but reward `{alias}` "
                        f"({suite.rewards[alias].name}) is not differentiable. Train it on a differentiable reward "
                        f"({', '.join(diffable) or 'none defined'}) via `reward:`, or use a gradient-free method such as drpo.",
                    )
        if spec.tune or spec.tuned_from:
            from drpo_bench.suite.tuning_records import check_tuning

            check_tuning(suite, i, entry, aliases, loader)

    for i, metric in enumerate(suite.eval.metrics):
        if metric.name in suite.rewards:
            if metric.args:
                raise loader.error(("eval", "metrics", i, "args"), f"`{metric.name}` is a reward alias; set its args under `rewards:`")
            continue
        if metric.name in METRICS:
            entry = parse(METRICS, metric, ("eval", "metrics", i))
            check_nested(entry.parse_config(metric.args), ("eval", "metrics", i, "args"), loader)
            continue
        valid = list(suite.rewards) + METRICS.names()
        raise loader.error(("eval", "metrics", i), f"`{metric.name}` is neither a reward alias nor a registered metric; nearest: {', '.join(nearest(metric.name, valid))}")


#: nested components a config may name: (name field, its args field, registry)
NESTED_COMPONENTS = (("features", "feature_args", "FEATURES"),)


def check_nested(config: Any, loc: tuple[Any, ...], loader: SuiteLoader) -> None:
    """A config that names another registered component (DrPO's or the diversity metric's feature
    encoder) has that name and its args checked too, before anything is built."""
    import drpo_bench.registry as registry

    for name_field, args_field, registry_name in NESTED_COMPONENTS:
        name = getattr(config, name_field, None)
        if not isinstance(name, str):
            continue
        reg = getattr(registry, registry_name)
        try:
            entry = reg.get(name)
        except UserError as exc:
            raise loader.error((*loc, name_field), str(exc)) from None
        try:
            entry.parse_config(getattr(config, args_field, None) or {})
        except ValidationError as exc:
            raise loader._from_validation(exc, (*loc, args_field), entry.config_model) from None


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    return SuiteLoader(path).load(overrides)


def schema_text(model: type[BaseModel] = None, indent: int = 2, depth: int = 0) -> str:  # type: ignore[assignment]
    """The suite schema as text for ``drpo-bench validate --help``: every field, nested sections
    (budget, train, eval, methods[]) indented, required fields marked, defaults shown."""
    from pydantic_core import PydanticUndefined

    model = model or Suite
    lines = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = _nested_model(annotation)
        if info.is_required():
            default = "required"
        elif info.default is not PydanticUndefined and not isinstance(info.default, BaseModel):
            default = f"default {info.default!r}"
        else:
            default = "optional"
        kind = ("[]" if "list[" in str(annotation) else "") if nested else f": {_type_name(annotation)}"
        lines.append(" " * (indent + 2 * depth) + f"{name}{kind}  ({default})")
        if nested is not None and depth < 2:
            lines.append(schema_text(nested, indent, depth + 1))
    return "\n".join(lines)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")
