"""The step-0 held-out evaluation, computed once per seed and shared by every trained cell.

Before its first update every trained cell of a seed holds the same generator: the base weights
and the freshly initialized LoRA (B = 0, A from ``lora_seed``), and it evaluates it with the same
eval noise (eval.seed + seed), prompts and metrics. So the first cell to get there evaluates and
writes the result under ``<output>/.eval-cache/``; the others of that seed read it. The base row's
cell holds that same generator, and its final evaluation begins with the same prompts and noise: it
writes the entry from its first ``every_max_prompts`` prompts (``CellRunner._evaluate_and_offer_step0``),
so where the base row runs first, as it does in suite order, no trained cell evaluates step 0. The key hashes
everything the result depends on, including the adapter's tensors at step 0, so a method whose
``prepare_generator`` changes the generator gets its own entry. The rows the cells write to
eval_history.jsonl are the ones each would have computed (tests/test_shared_eval.py). The folder
is removed once the run's cells are all finished (runner.run_suite).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from drpo_bench.run.locks import FileLock
from drpo_bench.suite.planning import Cell, redact
from drpo_bench.store import read_json, write_json

CACHE_DIR = ".eval-cache"


def step0_key(cell: Cell, generator: Any, reward_specs: dict[str, Any]) -> str:
    """Hash of what the step-0 evaluation depends on: generator config and its adapter tensors now,
    seed, eval settings (metrics included), prompt set, the suite rewards the metrics may name, and the
    code that evaluates (an entry left by an interrupted run is not reused after an edit of that code)."""
    from drpo_bench.suite.code_hash import evaluation_code

    digest = hashlib.sha256()
    payload = {"generator": cell.generator.model_dump(), "seed": cell.seed, "eval": redact(cell.eval.model_dump()),
               "code": evaluation_code(cell).hash,
               "prompts": cell.prompts.model_dump(),
               "rewards": {alias: redact(spec.model_dump()) for alias, spec in sorted(reward_specs.items())}}
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    for name, tensor in sorted(generator.adapter_state_dict().items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def shared_step0(output: Path, key: str, compute: Callable[[], tuple[dict[str, Any], torch.Tensor]]
                 ) -> tuple[dict[str, Any], torch.Tensor]:
    """(history row, sample images) for ``key``: read from the cache, or computed by ``compute()`` and
    written there. Cells at the same seed in other processes wait for the one computing it."""
    from safetensors.torch import load_file, save_file

    folder = output / CACHE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    row_path, images_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    with FileLock(folder / f"{key}.lock", wait=None, what="evaluate the step-0 generator"):
        if row_path.is_file() and images_path.is_file():
            return read_json(row_path), load_file(str(images_path))["images"]
        row, images = compute()
        tmp = images_path.with_suffix(".tmp")
        save_file({"images": images.contiguous()}, str(tmp))
        tmp.replace(images_path)
        write_json(row_path, row)  # written last: its presence means the entry is complete
        return row, images
