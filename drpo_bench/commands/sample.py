"""`drpo-bench sample`: images from a trained (or any) adapter, as one PNG grid.

``--adapter CELL_DIR`` rebuilds the cell's generator from its ``cell.json`` (the generator spec the
cell ran with) and loads the cell's ``adapter.safetensors``; ``--generator NAME --adapter FILE``
loads an adapter from elsewhere (e.g. the official DrPO LoRA, github UGVly/DrPO) into a
registered generator; ``--generator NAME`` alone samples the base. One row per prompt, its text
above it, ``--n`` images per row, noise drawn from ``--seed`` exactly as evaluation draws it (on CPU, so a seed
gives the same images on any device).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from drpo_bench.errors import UserError

SAMPLE_EXAMPLES = """\
examples:
  drpo-bench sample --adapter runs/quickstart/shapes--drpo--clip--s0 --prompt "a red circle" --n 4
  drpo-bench sample --generator sd-turbo --adapter drpo_lora.safetensors --prompt "a cat" --out cat.png
  drpo-bench sample --generator sd-turbo --set dtype=fp32 --set device=cpu --prompt "a cat"   # the base model
"""


def cell_of(path: Path) -> Path | None:
    """The cell folder ``path`` is or lies in (one with cell.json), if any."""
    for folder in (path, path.parent) if path.is_file() else (path,):
        if (folder / "cell.json").is_file():
            return folder
    return None


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` generator args; values read as YAML (``fp32``, ``64``, ``[to_q, to_k]``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must look like key=value, e.g. --set device=cpu")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def build_generator(name: str, args: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from drpo_bench.registry import GENERATORS

    entry = GENERATORS.get(name)
    try:
        config = entry.parse_config(args)
    except ValidationError as exc:
        raise UserError(f"generator {name}: invalid args {args}: {exc.errors()[0]['msg']}") from None
    return entry.cls(config)


def load_for_sampling(adapter: str | None, generator: str | None, sets: dict[str, Any]) -> tuple[Any, str]:
    """(generator with the adapter loaded, a description) for the command's arguments."""
    from drpo_bench.store import CellFolder

    if generator is None and adapter is None:
        raise UserError("sample: give --adapter CELL_DIR (a finished cell), or --generator NAME [--adapter FILE]")
    adapter_path = Path(adapter).expanduser() if adapter else None
    if adapter_path is not None and not adapter_path.exists():
        raise UserError(f"sample: --adapter {adapter} does not exist")
    if generator is None:
        assert adapter_path is not None
        folder = cell_of(adapter_path)
        if folder is None:
            raise UserError(
                f"sample: {adapter} is not a cell folder (no cell.json), so the generator is unknown: "
                "name it with --generator NAME (see `drpo-bench ls generators`)"
            )
        record = CellFolder(folder).read_cell()
        assert record is not None
        name, args = record.generator["name"], {**record.generator.get("args", {}), **sets}
        if adapter_path.is_dir() and not (adapter_path / CellFolder.ADAPTER).is_file():
            method_args = record.method.get("args") or {}
            if record.method.get("method") == "adapter" and "path" in method_args:
                adapter_path = Path(method_args["path"])  # an `adapter` row: the LoRA it evaluated
            else:
                raise UserError(
                    f"sample: cell {record.cell_id} trained no adapter (method {record.method_name}); sample its "
                    f"base with `drpo-bench sample --generator {name} --prompt ...`"
                )
    else:
        name, args = generator, sets
    gen = build_generator(name, args)
    if adapter_path is not None:
        gen.load_adapter(adapter_path)
    return gen, f"{name} + {adapter_path}" if adapter_path else f"{name} (base)"


@torch.no_grad()
def sample_images(generator: Any, prompts: Sequence[str], n: int, seed: int) -> torch.Tensor:
    """(len(prompts) * n, 3, H, W) images in [0, 1], prompt-major; one prompt's n images per forward."""
    rng = torch.Generator().manual_seed(seed)
    generator.train(False)
    images = []
    for prompt in prompts:
        noise = generator.noise(n, rng)  # (n, *latent_shape)
        images.append(generator.generate([prompt] * n, noise).float().cpu())  # (n, 3, H, W)
    return torch.cat(images)


def cmd_sample(args: argparse.Namespace) -> int:
    from rich.console import Console

    from drpo_bench.run.evaluation import write_samples_grid

    if args.n < 1:
        raise UserError("sample: --n must be at least 1")
    gen, what = load_for_sampling(args.adapter, args.generator, parse_sets(args.set))
    images = sample_images(gen, args.prompt, args.n, args.seed)
    out = Path(args.out)
    write_samples_grid(out, images, nrow=args.n, labels=[f"({i + 1}) {p}" for i, p in enumerate(args.prompt)])
    Console(stderr=True).print(f"{what}: {len(args.prompt)} prompt(s) x {args.n} image(s), seed {args.seed} → {out}")
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="a PNG grid from a cell's adapter, or any adapter on a named generator",
                       epilog=SAMPLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", help="a finished cell folder, or an adapter .safetensors (then give --generator "
                                     "unless the file lies in a cell folder)")
    p.add_argument("--generator", help="registered generator name (default: the cell's, from its cell.json)")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="generator arg, e.g. --set device=cpu --set dtype=fp32 (overrides the cell's)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several rows)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    p.set_defaults(func=cmd_sample)
